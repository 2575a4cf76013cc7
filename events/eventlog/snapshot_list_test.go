package eventlog

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// stuckList is an object store whose first listings never end (a
// watcher that never gets its first updates) and whose later ones do.
type stuckList struct {
	jetstream.ObjectStore
	stuck int32
	calls atomic.Int32
}

func (s *stuckList) List(ctx context.Context, _ ...jetstream.ListObjectsOpt) ([]*jetstream.ObjectInfo, error) {
	if s.calls.Add(1) <= s.stuck {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return []*jetstream.ObjectInfo{{ObjectMeta: jetstream.ObjectMeta{Name: snapshotPrefix + "1",
		Metadata: map[string]string{metaSnapshotSeq: strconv.Itoa(7), metaSnapshotStream: "s"}}}}, nil
}

func TestSnapshotListBounded(t *testing.T) {
	attempt := snapshotListAttempt
	snapshotListAttempt = 20 * time.Millisecond
	t.Cleanup(func() { snapshotListAttempt = attempt })
	for _, tc := range []struct {
		name  string
		stuck int32
		ok    bool
	}{
		{"answers", 0, true},
		{"answers on the last attempt", int32(snapshotListAttempts) - 1, true},
		{"never answers", int32(snapshotListAttempts), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &SnapshotStore{os: &stuckList{stuck: tc.stuck}}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			snap, err := s.Latest(ctx, "s")
			switch {
			case tc.ok && (err != nil || snap.Seq != 7):
				t.Fatalf("latest: %+v %v", snap, err)
			case !tc.ok && !errors.Is(err, context.DeadlineExceeded):
				t.Fatalf("a listing that never ends gave %+v %v", snap, err)
			case ctx.Err() != nil:
				t.Fatal("the caller's deadline passed: the listing was not bounded")
			}
		})
	}
}
