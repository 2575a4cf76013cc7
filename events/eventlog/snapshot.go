package eventlog

// # Snapshots
//
// A bounded log (MaxAge, MaxBytes) no longer starts at sequence 1, so a new
// or lagging instance cannot replay it from there. A snapshot is the
// projection as of a stream sequence, kept in the JetStream object store
// bucket REFGC_SNAPSHOTS under one name, the newest replacing the last. An
// instance that loads it follows the stream from the snapshot's sequence
// + 1: the follower accepts a stream whose first sequence is at most that.
// The snapshot records the stream's identity, so one taken from another
// stream (deleted and recreated) is refused as the projection's own
// binding would be.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSnapshotBucket is the object store bucket of snapshots.
const DefaultSnapshotBucket = "REFGC_SNAPSHOTS"

// snapshotObject is the name of the newest snapshot in the bucket.
const snapshotObject = "projection"

// Metadata keys of a snapshot object.
const (
	metaSnapshotSeq    = "refgc-seq"
	metaSnapshotStream = "refgc-stream"
)

// ErrNoSnapshot is returned when the bucket holds no snapshot.
var ErrNoSnapshot = errors.New("events: no snapshot")

// Snapshot describes a stored snapshot.
type Snapshot struct {
	// Seq is the last stream sequence the snapshot applied.
	Seq uint64
	// Stream is the identity of the stream Seq counts in (StreamID).
	Stream string
	// Size in bytes, and when it was stored.
	Size uint64
	Time time.Time
}

// SnapshotConfig configures a SnapshotStore.
type SnapshotConfig struct {
	// Bucket is the object store bucket (DefaultSnapshotBucket).
	Bucket string
	// Replicas of the bucket (1).
	Replicas int
}

// SnapshotStore keeps the newest snapshot of the projection in a
// JetStream object store.
type SnapshotStore struct {
	os jetstream.ObjectStore
}

// NewSnapshotStore creates (or opens) the bucket.
func NewSnapshotStore(ctx context.Context, js jetstream.JetStream, cfg SnapshotConfig) (*SnapshotStore, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultSnapshotBucket
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	var os jetstream.ObjectStore
	err := retryNoResponders(ctx, func() (err error) {
		os, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: cfg.Bucket,
			Description: "refgc: the newest snapshot of the projection", Storage: jetstream.FileStorage,
			Replicas: cfg.Replicas, Compression: true})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("events: snapshot bucket %s: %w", cfg.Bucket, err)
	}
	return &SnapshotStore{os: os}, nil
}

// Put stores a snapshot taken at seq of stream, replacing the last one.
// The object store writes it in chunks and makes it visible whole.
func (s *SnapshotStore) Put(ctx context.Context, seq uint64, stream string, r io.Reader) (Snapshot, error) {
	info, err := s.os.Put(ctx, jetstream.ObjectMeta{Name: snapshotObject,
		Metadata: map[string]string{metaSnapshotSeq: strconv.FormatUint(seq, 10), metaSnapshotStream: stream}}, r)
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: put snapshot: %w", err)
	}
	return snapshotOf(info)
}

func snapshotOf(info *jetstream.ObjectInfo) (Snapshot, error) {
	seq, err := strconv.ParseUint(info.Metadata[metaSnapshotSeq], 10, 64)
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: snapshot without a sequence: %w", err)
	}
	return Snapshot{Seq: seq, Stream: info.Metadata[metaSnapshotStream], Size: info.Size, Time: info.ModTime}, nil
}

// Latest describes the newest snapshot, or gives ErrNoSnapshot.
func (s *SnapshotStore) Latest(ctx context.Context) (Snapshot, error) {
	info, err := s.os.GetInfo(ctx, snapshotObject)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return Snapshot{}, ErrNoSnapshot
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("events: snapshot: %w", err)
	}
	return snapshotOf(info)
}

// Get writes the newest snapshot to w (its digest checked as it is read)
// and describes it, or gives ErrNoSnapshot.
func (s *SnapshotStore) Get(ctx context.Context, w io.Writer) (Snapshot, error) {
	res, err := s.os.Get(ctx, snapshotObject)
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
