package eventlog

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/internal/regtest"
)

// stuckWatch is an object store whose first watchers never give their
// initial values and whose later ones do, or (closed) close at once.
type stuckWatch struct {
	jetstream.ObjectStore
	stuck  int32
	closed bool
	calls  atomic.Int32
}

type objWatcher chan *jetstream.ObjectInfo

func (w objWatcher) Updates() <-chan *jetstream.ObjectInfo { return w }
func (w objWatcher) Stop() error                           { return nil }

func (s *stuckWatch) Watch(context.Context, ...jetstream.WatchOpt) (jetstream.ObjectWatcher, error) {
	w := make(objWatcher, 2)
	switch {
	case s.calls.Add(1) <= s.stuck:
	case s.closed:
		close(w)
	default:
		w <- &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: snapshotPrefix + "1",
			Metadata: map[string]string{metaSnapshotSeq: strconv.Itoa(7), metaSnapshotStream: "s"}}}
		w <- nil
	}
	return w, nil
}

// TestSnapshotListBounded: a listing of the snapshot bucket is tried a
// bounded number of times, within the caller's deadline, and a watcher
// that closes early is an error, never an empty bucket.
func TestSnapshotListBounded(t *testing.T) {
	regtest.Override(t, &snapshotListAttempt, 20*time.Millisecond)
	for _, tc := range []struct {
		name   string
		stuck  int32
		closed bool
		short  bool // the caller's deadline is shorter than one attempt
		want   error
		calls  int32
	}{
		{"answers", 0, false, false, nil, 1},
		{"answers on the last attempt", int32(snapshotListAttempts) - 1, false, false, nil, int32(snapshotListAttempts)},
		{"never answers", int32(snapshotListAttempts), false, false, context.DeadlineExceeded, int32(snapshotListAttempts)},
		{"the caller's deadline first", 100, false, true, context.DeadlineExceeded, 1},
		{"closed", 0, true, false, ErrWatchClosed, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os := &stuckWatch{stuck: tc.stuck, closed: tc.closed}
			s := &SnapshotStore{os: os}
			limit := 10 * time.Second
			if tc.short {
				limit = 5 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			snap, err := s.Latest(ctx, "s")
			switch {
			case tc.want == nil && (err != nil || snap.Seq != 7):
				t.Fatalf("latest: %+v %v", snap, err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("got %+v %v, want %v", snap, err, tc.want)
			case !tc.short && ctx.Err() != nil:
				t.Fatal("the caller's deadline passed: the listing was not bounded")
			case os.calls.Load() != tc.calls:
				t.Fatalf("%d attempts, want %d", os.calls.Load(), tc.calls)
			}
		})
	}
}

// sizedObject is an object store holding one object of size bytes, whose
// Get records its context's deadline.
type sizedObject struct {
	jetstream.ObjectStore
	size     uint64
	deadline time.Time
	bounded  bool
}

func (s *sizedObject) GetInfo(context.Context, string, ...jetstream.GetObjectInfoOpt) (*jetstream.ObjectInfo, error) {
	return &jetstream.ObjectInfo{Size: s.size}, nil
}

func (s *sizedObject) Get(ctx context.Context, _ string, _ ...jetstream.GetObjectOpt) (jetstream.ObjectResult, error) {
	s.deadline, s.bounded = ctx.Deadline()
	return nil, errors.New("not stored here")
}

// TestSnapshotReadDeadline: a snapshot read without a deadline of the
// caller's gets one that grows with its size, not nats.go's default
// request timeout for the whole download; the caller's own stands.
func TestSnapshotReadDeadline(t *testing.T) {
	const size = 1 << 30
	o := &sizedObject{size: size}
	start := time.Now()
	if _, err := (&SnapshotStore{os: o}).GetNamed(context.Background(), "snap", nil); err == nil {
		t.Fatal("no error from a failing Get")
	}
	if !o.bounded || o.deadline.Sub(start) < snapshotReadTimeout(size)-time.Second || snapshotReadTimeout(size) < 5*time.Minute {
		t.Fatalf("deadline %v (bounded %v) for %d bytes", o.deadline.Sub(start), o.bounded, size)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	if _, err := (&SnapshotStore{os: o}).GetNamed(ctx, "snap", nil); err == nil || !o.deadline.Equal(want) {
		t.Fatalf("the caller's deadline %v replaced by %v", want, o.deadline)
	}
}
