package collector_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// TestS3SlowDown: the S3 server answers 503 SlowDown to a burst of
// requests in the middle of a collection. The SDK's own retries run out;
// the store backs off (on the test's clock) and retries; no pass fails,
// no intent is left behind, the garbage goes and every live image pulls.
func TestS3SlowDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var slept time.Duration
	backoff := store.Backoff{Sleep: func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		slept += d
		mu.Unlock()
		return ctx.Err()
	}}
	// The backoff's clock: the pause it sets is over once slept through.
	backoff.Now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Unix(0, 0).Add(slept)
	}
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{s3: true,
		storeOpts: []store.Option{store.WithConcurrency(4), store.WithRegisterer(reg), store.WithBackoff(backoff)}})
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		e.reg.PushRandom(t, "app:"+tag, 2)
	}
	e.reg.PushRandom(t, "app:v1", 1) // moves v1: its old revision is garbage
	for _, tag := range []string{"v2", "v3"} {
		e.reg.DeleteTag(t, "app", tag)
	}
	e.settle()
	// The first request of the collection, and its three retries by the
	// SDK (which sleeps 3.5 to 7 s on the wall clock between them), are
	// refused: the SDK gives up and the store's backoff takes over.
	const refusals = 4
	var rep collector.Report
	regtest.CollectAndVerify(t, e.reg.Root, e.keep, e.kept, e.settle, func() {
		e.s3.ThrottleRequest(refusals)
		rep = e.drain()
	}, e.proj.Check)
	if rep.Unlinked == 0 || rep.Purged == 0 {
		t.Fatalf("nothing collected: %+v", rep)
	}
	if got := e.s3.SlowedDown(); got != refusals {
		t.Fatalf("%d requests slowed down, want %d", got, refusals)
	}
	if n := regtest.Counter(t, reg, "refgc_store_throttled_total"); n != 1 {
		t.Fatalf("the store saw %v throttled calls, want 1", n)
	}
	mu.Lock()
	if slept <= 0 {
		t.Errorf("no backoff")
	}
	mu.Unlock()
	if ins, err := e.proj.Intents(); err != nil || len(ins) > 0 {
		t.Fatalf("intents left: %+v %v", ins, err)
	}
	e.mustPull("app:v1")
	e.mustPull("app:v4")
}
