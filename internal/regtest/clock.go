package regtest

import (
	"sync/atomic"
	"time"
)

// Clock is a test's clock: the wall clock moved forward by Advance. Tests
// hand Now to the parts under test and Offset to Faults.ShiftTime, so the
// registry's notifications carry the same time the collector sees.
type Clock struct {
	offset atomic.Int64
}

// Now is the wall clock plus every Advance so far.
func (c *Clock) Now() time.Time { return time.Now().Add(c.Offset()) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// Offset is how far the clock is ahead of the wall clock.
func (c *Clock) Offset() time.Duration { return time.Duration(c.offset.Load()) }
