package regtest

import (
	"testing"
	"time"
)

// Drain moves a test clock past grace and retention step by step, running
// pass after each step, so that every cascade (revision, then layer links,
// then blob data) completes.
func Drain(t testing.TB, grace, retention time.Duration, advance func(time.Duration), pass func()) {
	t.Helper()
	for _, step := range []time.Duration{2 * grace, 2 * grace, 2 * grace, retention + grace, retention + grace} {
		advance(step)
		pass()
	}
}
