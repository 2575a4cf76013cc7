package daemon_test

import (
	"testing"
	"time"

	"github.com/refgc/refgc/internal/regtest"
)

// TestFreshPullsAreNotPublished: pulls of content the projection holds
// with a fresh lease cost no log write (one per registry instance per
// heartbeat at most), or every pull is published when the filter is off;
// either way the collector keeps what is tagged and removes the rest.
func TestFreshPullsAreNotPublished(t *testing.T) {
	const pulls = 10
	for _, tc := range []struct {
		name      string
		heartbeat time.Duration
		maxPub    float64 // published pulls at most; -1: every one
	}{
		{"filtered", time.Hour, 3},
		{"every pull", -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{pullHeartbeat: tc.heartbeat})
			h := e.reg.Push(t, "app:v1", regtest.RandomImage(t, 1))
			e.settle()
			counts := func() (received, skipped float64) {
				return metricWith(t, e.d, "refgc_webhook_events_received_total", "action", "pull"),
					metricSum(t, e.d, "refgc_webhook_pulls_skipped_total")
			}
			r0, s0 := counts()
			for range pulls {
				e.mustPull("app@" + h.String())
			}
			e.settle()
			r1, s1 := counts()
			received, published := r1-r0, (r1-s1)-(r0-s0)
			t.Logf("%d pulls: %v pull notifications, %v published", pulls, received, published)
			if received < 2*pulls {
				t.Fatalf("only %v pull notifications for %d pulls", received, pulls)
			}
			if tc.maxPub < 0 && published != received || tc.maxPub >= 0 && published > tc.maxPub {
				t.Fatalf("%v of %v pulls published", published, received)
			}
			e.reg.DeleteTag(t, "app", "v1")
			e.collectAndVerify()
		})
	}
}
