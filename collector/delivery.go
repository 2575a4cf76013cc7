package collector

// # Collecting only when the view is whole
//
// Eligibility is judged on event time against the delivery watermark: a
// registry's notification queue is sequential, so when the newest event
// applied from an instance was made at W, everything that instance did
// before W has been applied. A node becomes collectable at its eligibility
// time E (lease, grace); the collector takes it only when E is at or before
// the bound, the earliest watermark among the instances that still deliver,
// and before now. A lagging queue, or a backlog replayed after an outage,
// holds collection back instead of racing it.
//
// A registry instance that sends nothing may be idle or may be stuck, and
// refgc cannot tell which. An instance from which nothing arrived for
// QuietAfter (counted from the later of its last delivery and this
// collector's start, so that a restarted refgc first gives every registry
// time to redeliver its backlog) stops bounding: it is counted as quiet,
// and the storage check and heals are what stand between its late events
// and a loss. A registry restart shows as a new instance on the same host:
// the projection pauses collection until a reconcile has run.
//
// Pauses (refcount.Pause): while one covers the whole registry, no round
// runs; while one covers a repository, its candidates are passed over and
// no blob data is purged (a lost event in any repository may have linked
// it). With Config.Reconcile set, a pass first asks for the reconcile that
// lifts them.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// ErrPaused is returned (wrapped) by Pass when collection is paused for
// the whole registry and no reconcile lifted the pause.
var ErrPaused = errors.New("collector: paused until a reconcile")

// View is the collector's judgement of how complete the projection's view is.
type View struct {
	// Bound is the latest eligibility time an unlink candidate may have now.
	Bound time.Time `json:"bound"`
	// PurgeBound is the same for blob data, which cannot be healed: a
	// source bounds it until it has been quiet for the trash retention.
	PurgeBound time.Time `json:"purgeBound"`
	// Bounding is the source whose watermark sets Bound ("" when now does).
	Bounding string `json:"bounding,omitempty"`
	// Quiet are the sources that no longer bound unlinks.
	Quiet []string `json:"quiet,omitempty"`
	// Silent are the sources that delivered nothing for the trash
	// retention: each may have restarted without a word from its
	// successor. A pass marks them gone and pauses until a reconcile.
	Silent []string `json:"silent,omitempty"`
	// Paused are the pauses in force; Whole is set when one covers the
	// whole registry.
	Paused []refcount.Pause `json:"paused,omitempty"`
	Whole  bool             `json:"whole,omitempty"`
	// LastReconcile is the log sequence at which the last reconcile of the
	// whole registry began (0: none yet).
	LastReconcile uint64 `json:"lastReconcile"`
}

// View computes the bounds and the pauses at now.
func (c *Collector) View(now time.Time) (View, error) {
	v := View{Bound: now, PurgeBound: now}
	srcs, err := c.cfg.Projection.Sources()
	if err != nil {
		return v, err
	}
	retention := c.cfg.Projection.Options().Retention
	starting := now.Sub(c.started) < c.cfg.QuietAfter
	for _, s := range srcs {
		if s.Gone {
			continue // restarted: its queue is lost, and the pause stands for it
		}
		// Purges cannot be healed: a source bounds them until it has been
		// quiet for the whole retention (or while this collector starts),
		// and is taken for gone after that.
		if starting || now.Sub(s.Received) < retention {
			if s.Watermark.Before(v.PurgeBound) {
				v.PurgeBound = s.Watermark
			}
		} else {
			v.Silent = append(v.Silent, s.Source)
		}
		last := s.Received
		if c.started.After(last) {
			last = c.started
		}
		if now.Sub(last) >= c.cfg.QuietAfter {
			v.Quiet = append(v.Quiet, s.Source)
			continue
		}
		if s.Watermark.Before(v.Bound) {
			v.Bound, v.Bounding = s.Watermark, s.Source
		}
	}
	if v.Paused, err = c.cfg.Projection.Pauses(); err != nil {
		return v, err
	}
	for _, p := range v.Paused {
		v.Whole = v.Whole || p.Repo == ""
	}
	v.LastReconcile, err = c.cfg.Projection.LastReconcile()
	return v, err
}

// observe publishes a view in the metrics.
func (c *Collector) observe(v View, now time.Time) {
	c.m.watermarkLag.Set(now.Sub(v.Bound).Seconds())
	c.m.quietSources.Set(float64(len(v.Quiet)))
	c.m.paused.Reset()
	for _, p := range v.Paused {
		c.m.paused.WithLabelValues(p.Reason).Inc()
	}
}

// view computes the view for a pass: it pauses for the sources that fell
// silent, and asks for the reconcile that lifts its pauses first when a
// Reconcile hook is configured.
func (c *Collector) view(ctx context.Context) (View, error) {
	v, err := c.View(c.cfg.Now())
	if err == nil && len(v.Silent) > 0 {
		if err := c.silence(ctx, v.Silent); err != nil {
			return v, err
		}
		v, err = c.View(c.cfg.Now())
	}
	if err != nil || len(v.Paused) == 0 || c.cfg.Reconcile == nil {
		return v, err
	}
	var repos []string
	for _, p := range v.Paused {
		if p.Repo != "" {
			repos = append(repos, p.Repo)
		}
	}
	if v.Whole {
		repos = nil
	}
	c.cfg.Logger.Info("collection paused; reconciling first", "repositories", len(repos), "whole", v.Whole,
		"reason", v.Paused[0].Reason)
	if err := c.cfg.Reconcile(ctx, repos); err != nil {
		c.cfg.Logger.Warn("reconcile to lift a pause failed; collection stays paused", "err", err)
	}
	return c.View(c.cfg.Now())
}

// silence publishes a RefusedSourceSilent event for each silent source:
// the projection marks it gone and pauses collection until a reconcile.
func (c *Collector) silence(ctx context.Context, sources []string) error {
	now := c.cfg.Now().UTC()
	evs := make([]events.Event, 0, len(sources))
	for _, src := range sources {
		c.cfg.Logger.Warn("a registry instance delivered nothing for the trash retention: taken for gone, collection pauses until a reconcile",
			"source", src)
		sum := sha256.Sum256([]byte(src))
		evs = append(evs, events.Event{V: events.Version, ID: "silent-" + hex.EncodeToString(sum[:12]) + "-" + now.Format("20060102T150405"),
			Time: now, Source: src, Kind: events.Refused, Refused: &events.RefusedRef{Reason: events.RefusedSourceSilent}})
	}
	if err := c.cfg.Log.Publish(ctx, evs); err != nil {
		return fmt.Errorf("collector: publish silent sources: %w", err)
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return fmt.Errorf("collector: catch up: %w", err)
	}
	return nil
}

// heal re-links in storage what a late event proved live after the
// collector unlinked it, and publishes Healed for each one handled.
func (c *Collector) heal(ctx context.Context, rep *Report) error {
	heals, err := c.cfg.Projection.Heals()
	if err != nil || len(heals) == 0 {
		return err
	}
	now := c.cfg.Now()
	var evs []events.Event
	for _, h := range heals {
		n := h.Node
		if owned, err := c.ownedNode(n); err != nil {
			return err
		} else if owned {
			// The owner's statement brought it back; its database is
			// the storage, and nothing is to be re-linked here.
			evs = append(evs, c.healedEvent(n, healID(h)))
			continue
		}
		if _, err := c.cfg.Reader.LinkModTime(ctx, n); err == nil {
			// The registry wrote it again itself (a re-push): nothing to
			// heal, and writing it would undo a delete racing with us.
			evs = append(evs, c.healedEvent(n, healID(h)))
			continue
		}
		switch n.Kind {
		case events.NodeManifest:
			err = c.cfg.Storage.LinkRevision(ctx, n.Repo, n.Digest)
		case events.NodeLayer:
			err = c.cfg.Storage.LinkLayer(ctx, n.Repo, n.Digest)
		case events.NodeTag:
			err = c.healTag(ctx, n)
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// The data went with the trash retention: nothing can bring it
			// back but a new upload. The reconciler reports it as lost.
			c.m.healFailures.WithLabelValues(string(n.Kind)).Inc()
			c.cfg.Logger.Error("cannot heal: the data was already purged", "node", n.String(),
				"unlinked", h.UnlinkedAt, "proved_live", h.ProvedAt)
			rep.Lost++
		case err != nil:
			c.m.errors.WithLabelValues(string(n.Kind)).Inc()
			c.cfg.Logger.Warn("heal failed; retried on the next pass", "node", n.String(), "err", err)
			rep.Errors++
			continue
		default:
			delay := now.Sub(h.UnlinkedAt)
			c.m.heals.WithLabelValues(string(n.Kind)).Inc()
			c.m.healDelay.Observe(max(delay, 0).Seconds())
			c.cfg.Logger.Warn("healed: a late event proved an unlinked object live", "node", n.String(),
				"unlinked", h.UnlinkedAt, "proved_live", h.ProvedAt, "unavailable_for", delay)
			rep.Healed++
			rep.Unavailable = max(rep.Unavailable, delay)
			if !h.Received.IsZero() {
				rep.HealLag = max(rep.HealLag, now.Sub(h.Received))
			}
		}
		evs = append(evs, c.healedEvent(n, healID(h)))
	}
	return c.publishHealed(ctx, evs)
}

// healID names the Healed event of a heal, the same on every retry.
func healID(h refcount.Heal) string {
	sum := sha256.Sum256([]byte(h.Node.String()))
	return fmt.Sprintf("%d-%s", h.Seq, hex.EncodeToString(sum[:12]))
}

// refuse counts the storage check's refusals and publishes one Refused
// event per repository, pausing collection there until it is reconciled.
func (c *Collector) refuse(ctx context.Context, rs []refusal, rep *Report) error {
	repos := map[string]bool{}
	for _, r := range rs {
		c.m.refused.WithLabelValues(r.reason).Inc()
		rep.Refused++
		if r.reason == RefuseStorageError {
			c.cfg.Logger.Warn("storage check could not read the repository; its candidates wait",
				"node", r.node.String(), "err", r.detail)
			continue
		}
		c.cfg.Logger.Warn("storage check refused a candidate; its repository will be reconciled",
			"node", r.node.String(), "reason", r.reason, "detail", r.detail)
		repos[r.node.Repo] = true
	}
	if len(repos) == 0 {
		return nil
	}
	now := c.cfg.Now().UTC()
	evs := make([]events.Event, 0, len(repos))
	for repo := range repos {
		evs = append(evs, events.Event{V: events.Version, ID: "refused-" + newID(), Time: now, Source: c.cfg.Source,
			Kind: events.Refused, Refused: &events.RefusedRef{Reason: "storage_check", Repo: repo}})
	}
	if err := c.cfg.Log.Publish(ctx, evs); err != nil {
		return fmt.Errorf("collector: publish refusals: %w", err)
	}
	return nil
}
