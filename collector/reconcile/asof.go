package reconcile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// Point is a point in the event log's history: a stream sequence, or a
// time. The log as of a time is its longest prefix whose events were all
// received (or, for events refgc made itself, made) at or before it.
type Point struct {
	Seq  uint64
	Time time.Time
}

// ParsePoint reads a sequence number or an RFC 3339 time.
func ParsePoint(s string) (Point, error) {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n == 0 {
			return Point{}, errors.New("reconcile: sequence 0 is before the log")
		}
		return Point{Seq: n}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return Point{}, fmt.Errorf("reconcile: %q is neither a sequence nor an RFC 3339 time", s)
	}
	return Point{Time: t}, nil
}

// after reports whether a record lies beyond the point.
func (pt Point) after(r events.Record) bool {
	if pt.Seq != 0 {
		return r.Seq > pt.Seq
	}
	if r.Err != nil {
		return false
	}
	at := r.Event.Received
	if at.IsZero() {
		at = r.Event.Time
	}
	return at.After(pt.Time)
}

var errReachedPoint = errors.New("reached the point")

// ProjectionAt replays the log from sequence 1 up to pt into a fresh
// projection at path (which must not exist), with the options of the live
// one, and returns it open: the graph as it was then. The caller closes
// and removes it.
func ProjectionAt(ctx context.Context, path string, opts refcount.Options, replay eventlog.Replay, pt Point) (*refcount.Projection, error) {
	opts.NoSync = true
	p, err := openFresh(path, opts)
	if err != nil {
		return nil, err
	}
	if err := ReplayUntil(ctx, p, replay, pt); err != nil {
		p.Close()
		os.Remove(path)
		return nil, err
	}
	return p, nil
}

// ReplayUntil applies the events replay gives to p up to pt, and stops
// there: the log after a snapshot that p was loaded from, or the whole
// log into an empty p.
func ReplayUntil(ctx context.Context, p *refcount.Projection, replay eventlog.Replay, pt Point) error {
	err := replay(ctx, p.BindStream, func(recs []events.Record) error {
		n := len(recs)
		for i, r := range recs {
			if pt.after(r) {
				n = i
				break
			}
		}
		if n > 0 {
			if _, err := p.Apply(recs[:n]); err != nil {
				return err
			}
		}
		if n < len(recs) {
			return errReachedPoint
		}
		return nil
	})
	if errors.Is(err, errReachedPoint) {
		return nil
	}
	return err
}
