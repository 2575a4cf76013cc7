package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/prom"
	"github.com/refgc/refgc/refcount"
)

// DefaultSnapshotInterval is how often the collecting instance publishes
// a snapshot of its projection.
const DefaultSnapshotInterval = 6 * time.Hour

// snapshotStore opens the snapshot bucket.
func (d *Daemon) snapshotStore(ctx context.Context) (*eventlog.SnapshotStore, error) {
	s, err := eventlog.NewSnapshotStore(ctx, d.js, eventlog.SnapshotConfig{Replicas: d.cfg.NATS.Replicas, Keep: d.cfg.SnapshotKeep,
		Bucket: eventlog.DefaultSnapshotBucket + d.cfg.Partition.suffix()})
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	return s, nil
}

// loadSnapshot gives a new instance (no projection file yet) the newest
// snapshot of the stream it follows (the highest sequence of its identity), if there is one that the stream
// still reaches (its sequence at least the stream's first sequence - 1):
// the follower then starts after the snapshot's sequence instead of at 1,
// which a bounded log no longer holds. Without a usable snapshot, the
// projection starts empty as before.
//
// An existing projection follows from its own cursor, unless the log no
// longer holds the events after it (its cursor + 1 is below the stream's
// first sequence: it was stopped longer than the log keeps events). Such
// a projection is moved aside (refs.db.behind-SEQ, kept for an audit)
// and replaced by a usable snapshot; without one, it stays, and the
// follower halts on the gap as before.
func (d *Daemon) loadSnapshot(ctx context.Context) error {
	path := filepath.Join(d.cfg.DataDir, ProjectionFile)
	behind, cur := false, uint64(0)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		var err error
		if behind, cur, err = d.projectionBehind(ctx, path); err != nil || !behind {
			return err
		}
	}
	snaps, err := d.snapshotStore(ctx)
	if err != nil {
		return err
	}
	info, err := d.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("daemon: stream: %w", err)
	}
	id := eventlog.StreamID(info)
	latest, err := snaps.Latest(ctx, id)
	if errors.Is(err, eventlog.ErrNoSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if latest.Seq+1 < info.State.FirstSeq {
		d.log.Warn("snapshot not usable: starting an empty projection", "snapshotStream", latest.Stream,
			"snapshotSeq", latest.Seq, "stream", id, "firstSeq", info.State.FirstSeq)
		return nil
	}
	if behind {
		aside := fmt.Sprintf("%s.behind-%d", path, cur)
		if err := os.Rename(path, aside); err != nil {
			return fmt.Errorf("daemon: move the projection aside: %w", err)
		}
		d.log.Warn("projection behind the log's first event: moved aside, loading a snapshot",
			"cursor", cur, "firstSeq", info.State.FirstSeq, "movedTo", aside)
	}
	start := time.Now()
	got, err := downloadSnapshot(ctx, snaps, latest.Name, path)
	if err != nil {
		return err
	}
	d.log.Info("projection loaded from a snapshot", "seq", got.Seq, "bytes", got.Size,
		"taken", got.Time, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// downloadSnapshot writes the named snapshot to path, whole or not at all
// (through a temporary file beside it, synced and renamed).
func downloadSnapshot(ctx context.Context, snaps *eventlog.SnapshotStore, name, path string) (eventlog.Snapshot, error) {
	tmp := path + ".snapshot"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return eventlog.Snapshot{}, fmt.Errorf("daemon: snapshot: %w", err)
	}
	got, err := snaps.GetNamed(ctx, name, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return eventlog.Snapshot{}, fmt.Errorf("daemon: load snapshot: %w", err)
	}
	return got, nil
}

// projectionBehind reports whether the projection at path has a cursor
// the stream no longer continues (events after it aged out), and the
// cursor.
func (d *Daemon) projectionBehind(ctx context.Context, path string) (bool, uint64, error) {
	cur, err := d.projectionCursor(path)
	if err != nil {
		return false, 0, err
	}
	info, err := d.stream.Info(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("daemon: stream: %w", err)
	}
	return cur+1 < info.State.FirstSeq, cur, nil
}

// projectionCursor reads the cursor of the projection at path; the data
// directory's lock keeps any other instance off it meanwhile.
func (d *Daemon) projectionCursor(path string) (uint64, error) {
	p, err := refcount.Open(path, refcount.Options{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("daemon: projection: %w", err)
	}
	defer p.Close()
	cur, err := p.Cursor()
	if err != nil {
		return 0, fmt.Errorf("daemon: projection: %w", err)
	}
	return cur, nil
}

// startSnapshots publishes a snapshot every SnapshotInterval while this
// instance collects (the only instance, or the elected one).
func (d *Daemon) startSnapshots(ctx context.Context) {
	interval := d.cfg.SnapshotInterval
	if interval <= 0 {
		return
	}
	taken := prom.Register(d.reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_snapshots_total",
		Help: "Snapshots of the projection published to the object store, by result."}, []string{"result"}))
	size := prom.Register(d.reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_snapshot_size_bytes",
		Help: "Size of the last snapshot published."}))
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		every(ctx, interval, func() {
			if !d.IsLeader() {
				return
			}
			n, err := d.PublishSnapshot(ctx)
			if err != nil {
				taken.WithLabelValues("error").Inc()
				d.log.Error("snapshot", "err", err)
				return
			}
			taken.WithLabelValues("ok").Inc()
			size.Set(float64(n))
		})
	}()
}

// PublishSnapshot publishes a snapshot of the projection now and returns
// its size.
func (d *Daemon) PublishSnapshot(ctx context.Context) (int64, error) {
	snaps, err := d.snapshotStore(ctx)
	if err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(d.cfg.DataDir, "snapshot-*")
	if err != nil {
		return 0, fmt.Errorf("daemon: snapshot: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	info, err := d.proj.Snapshot(f)
	if err != nil {
		return 0, err
	}
	// Taken after the copy: every event in it was received (or made)
	// before, which is what a point in time is judged against.
	taken := d.now()
	if _, err := f.Seek(0, 0); err != nil {
		return 0, fmt.Errorf("daemon: snapshot: %w", err)
	}
	if _, err := snaps.Put(ctx, eventlog.Snapshot{Seq: info.Cursor, Stream: info.Stream, Taken: taken}, f); err != nil {
		return 0, err
	}
	d.log.Info("snapshot published", "seq", info.Cursor, "bytes", info.Size)
	return info.Size, nil
}
