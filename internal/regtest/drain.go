package regtest

import (
	"testing"
	"time"

	"github.com/refgc/refgc/collector"
)

// Drain moves a test clock past grace and retention step by step, running
// pass after each step, so that every cascade (revision, then layer links,
// then blob data) completes; it returns the passes' totals.
func Drain(t testing.TB, grace, retention time.Duration, advance func(time.Duration), pass func() collector.Report) collector.Report {
	t.Helper()
	var total collector.Report
	for _, step := range []time.Duration{2 * grace, 2 * grace, 2 * grace, retention + grace, retention + grace} {
		advance(step)
		rep := pass()
		if rep.Errors > 0 {
			t.Fatalf("pass had %d errors", rep.Errors)
		}
		total.Unlinked += rep.Unlinked
		total.Purged += rep.Purged
		total.Bytes += rep.Bytes
	}
	return total
}
