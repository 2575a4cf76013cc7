package regtest

import "testing"

// Override gives *p the value v for the rest of the test, and back its own at
// its end: a package's tunable (a timeout, an attempt count) shortened so
// that a test of its bound runs in milliseconds.
func Override[T any](t testing.TB, p *T, v T) {
	t.Helper()
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}
