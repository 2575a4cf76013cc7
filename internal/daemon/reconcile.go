package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
)

// ErrCollectionHalted is returned (wrapped) by Collect once the follower
// stopped with eventlog.ErrCursorGap or eventlog.ErrUndecodable: the
// projection no longer follows the log, and a pass acting on it could
// delete what it never heard of.
var ErrCollectionHalted = errors.New("daemon: collection halted, the projection is stale")

// haltsCollection reports whether the follower's error leaves the
// projection stale for good (see halt), rather than stopping the daemon.
func haltsCollection(err error) bool {
	return errors.Is(err, eventlog.ErrCursorGap) || errors.Is(err, eventlog.ErrUndecodable)
}

func (d *Daemon) newReconciler(log eventlog.Log, reg prometheus.Registerer) (*reconcile.Reconciler, error) {
	r, err := reconcile.New(reconcile.Config{
		Projection: d.proj, Store: d.store, Log: log, Intents: d.intentStore(), Concurrency: d.cfg.Collector.Concurrency,
		Logger: d.log, Registerer: reg, Now: d.now, Owned: d.ownedBy,
	})
	if err != nil {
		return nil, fmt.Errorf("daemon: reconciler: %w", err)
	}
	return r, nil
}

// startReconcile starts the reconcile loop. When the projection is empty
// (cursor 0: a new or deleted refs.db) the first pass runs at once, and the
// pass lock is taken here, before any collector pass can start, so that no
// collector pass acts on a projection that has not yet seen storage.
func (d *Daemon) startReconcile(ctx context.Context) error {
	cursor, err := d.proj.Cursor()
	if err != nil {
		return fmt.Errorf("daemon: projection cursor: %w", err)
	}
	first := cursor == 0
	if first {
		d.passMu.Lock()
	}
	interval := d.cfg.Collector.ReconcileInterval
	if !first && interval <= 0 {
		return nil
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if first {
			d.log.Info("empty projection: reconciling it with storage before any collector pass")
			d.reconcileLocked(ctx, "start")
			d.passMu.Unlock()
		}
		if interval <= 0 {
			return
		}
		every(ctx, interval, func() {
			if d.halted.Load() != nil || !d.IsLeader() {
				return
			}
			d.passMu.Lock()
			d.reconcileLocked(ctx, "interval")
			d.passMu.Unlock()
		})
	}()
	return nil
}

// reconcileLocked runs one applying pass; the caller holds passMu.
func (d *Daemon) reconcileLocked(ctx context.Context, why string) {
	drift, err := d.rec.Reconcile(ctx, true)
	switch {
	case err != nil && ctx.Err() == nil:
		d.log.Error("reconcile pass failed", "trigger", why, "err", err)
	case err != nil:
	case drift.Clean() && drift.Scanned["repositories"] == 0 && drift.Scanned["blobs"] == 0:
		d.log.Info("reconcile pass: storage holds no repositories and no blobs yet (if the registry has images, "+
			"this is not its storage)", "trigger", why, "duration", drift.Duration)
	case drift.Clean():
		d.log.Info("reconcile pass: projection matches storage", "trigger", why, "duration", drift.Duration,
			"scanned", drift.Scanned)
	default:
		d.log.Warn("reconcile pass corrected drift", "trigger", why, "drift", drift.String(),
			"published", drift.Published, "examples", drift.Examples)
	}
}

// halt is called once the follower stopped for good: the stream no longer
// reaches the projection's cursor or is another stream than the one it
// counts in (eventlog.ErrCursorGap, with events.ErrStreamChanged for a
// recreated stream), or it holds an event this refgc cannot read
// (eventlog.ErrUndecodable). Collection stops for good in this process; the
// webhook stays up so that notifications still reach the log; a verify
// pass (which needs no follower) reports how far the projection is from
// storage.
func (d *Daemon) halt(ctx context.Context, err error) {
	rebuild := "run `refgc rebuild --out FILE` to compare a rebuilt projection with this one; then stop refgc, " +
		"move refs.db aside, delete the event stream (the embedded server's nats directory, or `nats stream rm` on " +
		"an external server) and start refgc again: an empty projection is reconciled from storage before any collector pass"
	msg := "the event log no longer reaches the projection's cursor: collection is halted until the projection is rebuilt"
	todo := rebuild
	switch {
	case errors.Is(err, events.ErrStreamChanged):
		msg = "the event stream is not the one the projection's cursor counts in (it was deleted and created again): " +
			"collection is halted until the projection is rebuilt"
	case errors.Is(err, eventlog.ErrUndecodable):
		msg = "the event log holds an event this refgc cannot read: collection is halted until refgc is upgraded or the projection is rebuilt"
		todo = "if a newer refgc wrote the event, upgrade this one; otherwise " + rebuild
	}
	d.halted.Store(&msg)
	d.log.Error("FOLLOWER STOPPED: "+msg, "err", err, "todo", todo)
	if d.rec == nil {
		return
	}
	v, verr := d.newReconciler(nil, nil)
	if verr != nil {
		d.log.Error("verify after the follower stopped", "err", verr)
		return
	}
	d.passMu.Lock()
	drift, verr := v.Verify(ctx)
	d.passMu.Unlock()
	switch {
	case verr != nil:
		d.log.Error("verify after the follower stopped", "err", verr)
	case drift.Clean():
		d.log.Warn("verify after the follower stopped: the projection still matches storage, collection stays halted")
	default:
		d.log.Error("verify after the follower stopped: the projection drifts from storage", "drift", drift.String(),
			"examples", drift.Examples)
	}
}

// Verify compares storage with the projection and changes nothing. Once
// the follower has stopped it compares with the projection as it stands.
func (d *Daemon) Verify(ctx context.Context) (reconcile.Drift, error) {
	if d.rec == nil {
		return reconcile.Drift{}, ErrNoStorage
	}
	r := d.rec
	if !d.followerUp.Load() {
		var err error
		if r, err = d.newReconciler(nil, nil); err != nil {
			return reconcile.Drift{}, err
		}
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	return r.Verify(ctx)
}

// Reconcile runs one reconcile pass now; with apply it publishes the
// corrections and waits until the projection has applied them.
func (d *Daemon) Reconcile(ctx context.Context, apply bool) (reconcile.Drift, error) {
	if d.rec == nil {
		return reconcile.Drift{}, ErrNoStorage
	}
	if !apply {
		return d.Verify(ctx)
	}
	if why := d.halted.Load(); why != nil {
		return reconcile.Drift{}, fmt.Errorf("%w: %s", ErrCollectionHalted, *why)
	}
	if !d.IsLeader() {
		return reconcile.Drift{}, ErrNotLeader
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	return d.rec.Reconcile(ctx, apply)
}

// Rebuild writes a fresh projection at path (which must not exist) by
// replaying the event stream from sequence 1, or from a walk of storage
// when the stream no longer starts there, and compares it with the live
// projection. The live projection is left as it is.
func (d *Daemon) Rebuild(ctx context.Context, path string) (reconcile.RebuildReport, error) {
	if d.rec == nil {
		return reconcile.RebuildReport{}, ErrNoStorage
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	return d.rec.Rebuild(ctx, path, eventlog.StreamReplay(d.stream, 0))
}
