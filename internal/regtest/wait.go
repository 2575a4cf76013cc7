package regtest

import (
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test after 30 s. It waits
// for a condition, never for time to pass.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Must returns v, and panics if err is set: for a constructor whose error
// a test does not expect, in an expression.
func Must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
