package collector

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// watchedBucket is a bucket whose watcher gives the entries of keys, then
// ends as end says: "marker" (the end of its initial values), "closed"
// (its subscription closed) or "stall" (nothing more, ever).
type watchedBucket struct {
	jetstream.KeyValue
	keys []string
	end  string
}

type entry struct {
	jetstream.KeyValueEntry
	key   string
	value []byte
}

func (e *entry) Key() string   { return e.key }
func (e *entry) Value() []byte { return e.value }

type watcher chan jetstream.KeyValueEntry

func (w watcher) Updates() <-chan jetstream.KeyValueEntry { return w }
func (w watcher) Stop() error                             { return nil }

func (b *watchedBucket) WatchAll(context.Context, ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	w := make(watcher, len(b.keys)+1)
	for _, k := range b.keys {
		w <- &entry{key: k}
	}
	switch b.end {
	case "marker":
		w <- nil
	case "closed":
		close(w)
	}
	return w, nil
}

func (b *watchedBucket) Get(_ context.Context, k string) (jetstream.KeyValueEntry, error) {
	v, err := json.Marshal(refcount.Intent{ID: k})
	return &entry{key: k, value: v}, err
}

// TestListIntentsWhole: intents are listed only whole; a watcher that
// closes or stalls before the end of its initial values is an error, not
// the shorter list it gave so far.
func TestListIntentsWhole(t *testing.T) {
	regtest.Override(t, &intentListTimeout, 20*time.Millisecond)
	for _, tc := range []struct {
		end  string
		want error
	}{
		{"marker", nil},
		{"closed", eventlog.ErrWatchClosed},
		{"stall", context.DeadlineExceeded},
	} {
		t.Run(tc.end, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s := &KVIntents{kv: &watchedBucket{keys: []string{"i1", "i2"}, end: tc.end}}
			ins, err := s.ListIntents(ctx)
			switch {
			case ctx.Err() != nil:
				t.Fatal("the listing was not bounded")
			case tc.want == nil && (err != nil || len(ins) != 2):
				t.Fatalf("whole listing: %v %v", ins, err)
			case tc.want != nil && (!errors.Is(err, tc.want) || ins != nil):
				t.Fatalf("listing ended by %s: %v %v, want %v", tc.end, ins, err, tc.want)
			}
		})
	}
}
