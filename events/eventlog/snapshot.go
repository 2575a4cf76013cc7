package eventlog

// # Snapshots
//
// A bounded log (MaxAge, MaxBytes) no longer starts at sequence 1, so a new
// or lagging instance cannot replay it from there. A snapshot is the
// projection as of a stream sequence, kept in the JetStream object store
// bucket REFGC_SNAPSHOTS, one object per snapshot named by its sequence;
// the newest Keep are kept and older ones deleted as a new one is stored.
// An instance that loads one follows the stream from the snapshot's
// sequence + 1: the follower accepts a stream whose first sequence is at
// most that. The past snapshots let an audit of the graph at a point of a
// trimmed log (dump --at) start from the newest snapshot at or before it.
// A snapshot records the stream's identity, so one taken from another
// stream (deleted and recreated) is refused as the projection's own
// binding would be, and the time it was taken by refgc's clock, against
// which points in time are judged.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSnapshotBucket is the object store bucket of snapshots.
const DefaultSnapshotBucket = "REFGC_SNAPSHOTS"

// DefaultSnapshotKeep is how many snapshots the bucket keeps: with the
// daemon's default interval of 6 h, two days of points to audit from.
const DefaultSnapshotKeep = 8

// snapshotPrefix begins the name of every snapshot object: the prefix and
// the sequence, zero-padded so that names sort as sequences do. The
// single object of earlier versions, named "projection", is read as one
// snapshot among the others.
const snapshotPrefix = "projection"

// Metadata keys of a snapshot object.
const (
	metaSnapshotSeq    = "refgc-seq"
	metaSnapshotStream = "refgc-stream"
	metaSnapshotTaken  = "refgc-taken"
)

// ErrNoSnapshot is returned when the bucket holds no snapshot.
var ErrNoSnapshot = errors.New("events: no snapshot")

// Snapshot describes a stored snapshot.
type Snapshot struct {
	// Seq is the last stream sequence the snapshot applied.
	Seq uint64
	// Stream is the identity of the stream Seq counts in (StreamID).
	Stream string
	// Taken is when the projection was copied, by refgc's clock: every
	// event it holds was received (or made) before. Zero for a snapshot
	// of an earlier version, which did not record it.
	Taken time.Time
	// Size in bytes, and when it was stored (by the server's clock).
	Size uint64
	Time time.Time
	// Name is the object's name in the bucket.
	Name string
}

// SnapshotConfig configures a SnapshotStore.
type SnapshotConfig struct {
	// Bucket is the object store bucket (DefaultSnapshotBucket).
	Bucket string
	// Replicas of the bucket (1).
	Replicas int
	// Keep is how many snapshots to keep, the newest (DefaultSnapshotKeep).
	Keep int
}

// SnapshotStore keeps the newest snapshots of the projection in a
// JetStream object store.
type SnapshotStore struct {
	os   jetstream.ObjectStore
	keep int
}

// NewSnapshotStore creates (or opens) the bucket.
func NewSnapshotStore(ctx context.Context, js jetstream.JetStream, cfg SnapshotConfig) (*SnapshotStore, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultSnapshotBucket
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Keep <= 0 {
		cfg.Keep = DefaultSnapshotKeep
	}
	var os jetstream.ObjectStore
	err := retryNoResponders(ctx, func() (err error) {
		os, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: cfg.Bucket,
			Description: "refgc: the newest snapshots of the projection", Storage: jetstream.FileStorage,
			Replicas: cfg.Replicas, Compression: true})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("events: snapshot bucket %s: %w", cfg.Bucket, err)
	}
	return &SnapshotStore{os: os, keep: cfg.Keep}, nil
}

// Put stores a snapshot taken at snap.Seq of snap.Stream (at snap.Taken),
// then deletes the oldest stored beyond the bucket's Keep. The object store writes
// it in chunks and makes it visible whole.
func (s *SnapshotStore) Put(ctx context.Context, snap Snapshot, r io.Reader) (Snapshot, error) {
	meta := map[string]string{metaSnapshotSeq: strconv.FormatUint(snap.Seq, 10), metaSnapshotStream: snap.Stream}
	if !snap.Taken.IsZero() {
		meta[metaSnapshotTaken] = snap.Taken.UTC().Format(time.RFC3339Nano)
	}
	info, err := s.os.Put(ctx, jetstream.ObjectMeta{Name: fmt.Sprintf("%s-%020d", snapshotPrefix, snap.Seq), Metadata: meta}, r)
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: put snapshot: %w", err)
	}
	stored, err := snapshotOf(info)
	if err != nil {
		return Snapshot{}, err
	}
	all, err := s.List(ctx)
	if err != nil {
		return stored, err
	}
	// The oldest stored go first (not the lowest sequences: a stream
	// deleted and created again counts from 1 again).
	slices.SortStableFunc(all, func(a, b Snapshot) int { return a.Time.Compare(b.Time) })
	for len(all) > s.keep {
		if err := s.os.Delete(ctx, all[0].Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return stored, fmt.Errorf("events: delete snapshot %s: %w", all[0].Name, err)
		}
		all = all[1:]
	}
	return stored, nil
}

func snapshotOf(info *jetstream.ObjectInfo) (Snapshot, error) {
	seq, err := strconv.ParseUint(info.Metadata[metaSnapshotSeq], 10, 64)
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: snapshot %s without a sequence: %w", info.Name, err)
	}
	snap := Snapshot{Seq: seq, Stream: info.Metadata[metaSnapshotStream], Size: info.Size, Time: info.ModTime, Name: info.Name}
	if v := info.Metadata[metaSnapshotTaken]; v != "" {
		if snap.Taken, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return Snapshot{}, fmt.Errorf("events: snapshot %s: %w", info.Name, err)
		}
	}
	return snap, nil
}

// snapshotListAttempt bounds one listing of the bucket, and
// snapshotListAttempts how many are made. A watcher whose consumer a
// cluster dropped (a stream leader elected while it was created) never
// gives its initial values: without a bound, a daemon's start waited on
// one for ever.
var (
	snapshotListAttempt  = 10 * time.Second
	snapshotListAttempts = 3
)

// List describes every snapshot in the bucket, oldest first (by sequence).
// It reads the bucket's watcher itself (InitialValues), not through
// ObjectStore.List, which takes a closed watcher for an empty bucket.
func (s *SnapshotStore) List(ctx context.Context) ([]Snapshot, error) {
	var infos []*jetstream.ObjectInfo
	var err error
	for range snapshotListAttempts {
		actx, cancel := context.WithTimeout(ctx, snapshotListAttempt)
		infos, err = s.listOnce(actx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			break
		}
	}
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer in %d attempts of %s: %w", snapshotListAttempts, snapshotListAttempt, err)
	}
	if err != nil {
		return nil, fmt.Errorf("events: list snapshots: %w", err)
	}
	var out []Snapshot
	for _, info := range infos {
		if !strings.HasPrefix(info.Name, snapshotPrefix) {
			continue
		}
		snap, err := snapshotOf(info)
		if err != nil {
			return nil, err
		}
		out = append(out, snap)
	}
	slices.SortFunc(out, func(a, b Snapshot) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

func (s *SnapshotStore) listOnce(ctx context.Context) ([]*jetstream.ObjectInfo, error) {
	w, err := s.os.Watch(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	return InitialValues(ctx, w.Updates())
}

// Latest describes the newest snapshot of the stream whose identity is
// given (StreamID; "" for any stream), highest sequence first, or gives
// ErrNoSnapshot.
func (s *SnapshotStore) Latest(ctx context.Context, stream string) (Snapshot, error) {
	all, err := s.List(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if stream == "" || all[i].Stream == stream {
			return all[i], nil
		}
	}
	return Snapshot{}, ErrNoSnapshot
}

// Get writes the newest snapshot of the stream (as for Latest) to w, its
// digest checked as it is read, and describes it, or gives ErrNoSnapshot.
func (s *SnapshotStore) Get(ctx context.Context, stream string, w io.Writer) (Snapshot, error) {
	latest, err := s.Latest(ctx, stream)
	if err != nil {
		return Snapshot{}, err
	}
	return s.GetNamed(ctx, latest.Name, w)
}

// GetNamed writes the snapshot of that name (Snapshot.Name) to w and
// describes it, or gives ErrNoSnapshot.
func (s *SnapshotStore) GetNamed(ctx context.Context, name string, w io.Writer) (Snapshot, error) {
	if _, ok := ctx.Deadline(); !ok {
		// nats.go bounds a Get whose context has no deadline by its
		// default request timeout (5 s), the whole download included:
		// give it one that grows with the snapshot instead.
		info, err := s.os.GetInfo(ctx, name)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return Snapshot{}, ErrNoSnapshot
		}
		if err != nil {
			return Snapshot{}, fmt.Errorf("events: get snapshot: %w", err)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, snapshotReadTimeout(info.Size))
		defer cancel()
	}
	res, err := s.os.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return Snapshot{}, ErrNoSnapshot
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: get snapshot: %w", err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: get snapshot: %w", err)
	}
	snap, err := snapshotOf(info)
	if err != nil {
		return Snapshot{}, err
	}
	if _, err := io.Copy(w, res); err != nil {
		return Snapshot{}, fmt.Errorf("events: read snapshot: %w", err)
	}
	return snap, nil
}

// snapshotReadTimeout is how long a snapshot of size bytes may take to
// read when the caller sets no deadline: a minute, and a second per 4 MiB.
func snapshotReadTimeout(size uint64) time.Duration {
	return time.Minute + time.Duration(size/(4<<20))*time.Second
}

// retryNoResponders calls fn again, with a short backoff, while it fails
// for want of a responder: in a cluster, the replicas of a stream just
// created elect their leader a moment after the meta leader answers, and
// a request to the stream meanwhile finds no one (nats.ErrNoResponders).
func retryNoResponders(ctx context.Context, fn func() error) error {
	wait := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || !errors.Is(err, nats.ErrNoResponders) || attempt == 8 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}
