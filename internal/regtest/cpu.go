package regtest

import (
	"syscall"
	"testing"
	"time"
)

// CPUTime is the process's user and system CPU time so far: a benchmark's
// cost on a machine whose other load makes its wall time noisy.
func CPUTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
