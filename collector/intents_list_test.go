package collector

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// stalledKeys is a bucket whose key listing gives one key and then never
// ends, until its context does (a watcher that never gets the end of its
// first updates); it closes its keys then, as nats.go's lister does.
type stalledKeys struct{ jetstream.KeyValue }

func (stalledKeys) ListKeys(ctx context.Context, _ ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	keys := make(chan string, 1)
	keys <- "intent-1"
	go func() {
		<-ctx.Done()
		close(keys)
	}()
	return lister(keys), nil
}

type lister chan string

func (l lister) Keys() <-chan string { return l }
func (l lister) Stop() error         { return nil }

// TestListIntentsCutShort: a key listing the timeout ends is an error, not
// the shorter list it gave so far.
func TestListIntentsCutShort(t *testing.T) {
	timeout := intentListTimeout
	intentListTimeout = 20 * time.Millisecond
	t.Cleanup(func() { intentListTimeout = timeout })
	s := &KVIntents{kv: stalledKeys{}}
	ins, err := s.ListIntents(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a listing cut short gave %v, %v", ins, err)
	}
}
