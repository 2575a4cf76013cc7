package collector

// # Deletion through the owner
//
// A registry that publishes refgc's events itself and keeps its metadata in
// a database of its own (the Quay model) owns objects that refgc cannot
// delete by storage path: its labels and legacy images, and its tags,
// manifests and blobs. Config.Owners routes, per event source, the kinds
// of node that source stated to its owner; every other node goes to
// Storage as before (Distribution storage stays the owner of
// Distribution's kinds), and a label or legacy image of a source without an
// owner is bookkeeping only.
//
// A round asks each owner once, with one request for all its intents
// (collector/owner describes the contract). Only the items the owner
// answers deleted or absent are committed; a timeout, an error, or a
// refusal leaves the intent for the next pass, whose recovery asks again
// (or drops it, when the node is held by then). An owner that still uses
// an object says why, with events that state what holds it: the collector
// publishes them, under ids of its own and the node's source, so the
// projection holds the object again. Owned nodes skip the storage check
// (the owner checks use in its own transaction, which is the stronger
// check) and have nothing in storage to heal or to put back.
//
// Owned tags are the owner's rows: their lifetimes follow the owner's
// (lifetimes.go), and RestoreTag asks the owner to restore one (an Owner
// that is also a Restorer), publishing the tag.set it answers with.
//
// Without Storage (every object owned), candidates that no owner takes
// are refused (RefuseNoOwner) before any intent, except labels and legacy
// images, which are bookkeeping only.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
	"github.com/refgc/refgc/refcount"
)

// Owner deletes objects that a registry keeps in its own database, one
// batch per call. *owner.Client implements it. Results answer items by
// intent id; an item without a result stays to be retried.
type Owner interface {
	Delete(ctx context.Context, items []owner.Item) ([]owner.Result, error)
}

// OwnerRoute sends the nodes one event source stated, of the given kinds,
// to their owner.
type OwnerRoute struct {
	Owner Owner
	// Kinds are the node kinds the owner deletes; empty means every kind.
	Kinds []events.NodeKind
}

// statementKinds are the kinds an owner may state what holds an object
// with: statements of presence and reference, never removals.
var statementKinds = []events.Kind{events.ManifestPushed, events.TagSet, events.BlobPushed, events.BlobMounted,
	events.LabelAttached, events.LegacyImageCreated, events.LegacyDerived}

type ownerMetrics struct {
	results  *prometheus.CounterVec
	errors   prometheus.Counter
	requests prometheus.Histogram
}

func newOwnerMetrics(reg prometheus.Registerer) *ownerMetrics {
	return &ownerMetrics{
		results: prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_owner_results_total",
			Help: "Owners' answers about objects the collector asked them to delete, by status (deleted, absent, in_use, refused, unanswered)."},
			[]string{"status"})),
		errors: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_collector_owner_errors_total",
			Help: "Requests to owners that failed (timeout, no owner, service error, broken contract); their intents are retried."})),
		requests: prom.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refgc_collector_owner_request_seconds",
			Help: "Duration of requests to owners.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)})),
	}
}

// ownerOf returns the owner of a node stated by origin (a source, or an
// instance of it: "quay:replica-1" is routed as "quay" unless it has a
// route of its own), or nil when the node goes to storage.
func (c *Collector) ownerOf(origin string, kind events.NodeKind) Owner {
	r, ok := c.cfg.Owners[origin]
	if name, _, instance := strings.Cut(origin, ":"); !ok && instance {
		r, ok = c.cfg.Owners[name] // an instance of the source ("quay:replica-1")
	}
	if !ok || r.Owner == nil || (len(r.Kinds) > 0 && !slices.Contains(r.Kinds, kind)) {
		return nil
	}
	return r.Owner
}

// owned reports whether an intent goes to an owner.
func (c *Collector) owned(in refcount.Intent) bool { return c.ownerOf(in.Origin, in.Node.Kind) != nil }

// askOwners sends each owner one request for its intents and returns the
// intents it deleted (or did not hold), and the corrections its refusals
// stated.
func (c *Collector) askOwners(ctx context.Context, intents []refcount.Intent, rep *Report, mu *sync.Mutex) ([]refcount.Intent, []events.Event) {
	type batch struct {
		owner   Owner
		intents []refcount.Intent
	}
	var batches []*batch
	for _, in := range intents {
		o := c.ownerOf(in.Origin, in.Node.Kind)
		i := slices.IndexFunc(batches, func(b *batch) bool { return b.owner == o })
		if i < 0 {
			batches = append(batches, &batch{owner: o})
			i = len(batches) - 1
		}
		batches[i].intents = append(batches[i].intents, in)
	}
	var done []refcount.Intent
	var corrections []events.Event
	var wg sync.WaitGroup
	for _, b := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, corr, errs := c.askOwner(ctx, b.owner, b.intents)
			mu.Lock()
			defer mu.Unlock()
			done = append(done, d...)
			corrections = append(corrections, corr...)
			rep.Errors += errs
		}()
	}
	wg.Wait()
	return done, corrections
}

func (c *Collector) askOwner(ctx context.Context, o Owner, intents []refcount.Intent) (done []refcount.Intent, corrections []events.Event, errs int) {
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			return nil, nil, 1
		}
	}
	items := make([]owner.Item, len(intents))
	byID := make(map[string]refcount.Intent, len(intents))
	for i, in := range intents {
		items[i] = owner.Item{Intent: in.ID, Node: in.Node}
		byID[in.ID] = in
	}
	start := time.Now()
	results, err := o.Delete(ctx, items)
	c.om.requests.Observe(time.Since(start).Seconds())
	if err != nil {
		c.om.errors.Inc()
		c.cfg.Logger.Warn("owner did not answer; its intents stay for the next pass", "items", len(items), "err", err)
		return nil, nil, 1
	}
	answered := map[string]bool{}
	now := c.cfg.Now().UTC()
	for _, r := range results {
		in, ok := byID[r.Intent]
		if !ok || answered[r.Intent] {
			continue
		}
		answered[r.Intent] = true
		c.om.results.WithLabelValues(string(r.Status)).Inc()
		switch r.Status {
		case owner.StatusDeleted, owner.StatusAbsent:
			done = append(done, in)
		case owner.StatusInUse:
			c.cfg.Logger.Warn("owner still uses an object the projection found unreferenced; publishing its statements",
				"node", in.Node.String(), "reason", r.Reason, "detail", r.Detail, "statements", len(r.Statements))
			corrections = append(corrections, c.ownerStatements(in, r.Statements, now)...)
		default:
			c.cfg.Logger.Info("owner refused to delete an object; retried on the next pass",
				"node", in.Node.String(), "reason", r.Reason, "detail", r.Detail)
		}
	}
	if n := len(intents) - len(answered); n > 0 {
		c.om.results.WithLabelValues("unanswered").Add(float64(n))
	}
	return done, corrections, 0
}

// ownerStatements makes an owner's statements about an intent's node
// events of the log: statements of presence and reference only, under ids
// derived from the intent and the node's source.
func (c *Collector) ownerStatements(in refcount.Intent, stmts []events.Event, now time.Time) []events.Event {
	var out []events.Event
	for j, s := range stmts {
		if !slices.Contains(statementKinds, s.Kind) {
			c.cfg.Logger.Warn("owner stated a kind that cannot hold an object; ignored", "node", in.Node.String(), "kind", s.Kind)
			continue
		}
		s.V, s.ID, s.Source = events.Version, fmt.Sprintf("owner-%s-%d", in.ID, j), in.Origin
		s.Received, s.Host = time.Time{}, ""
		if s.Time.IsZero() {
			s.Time = now
		}
		out = append(out, s)
	}
	return out
}

// Restorer is an Owner that restores tags from its own time machine
// (*owner.Client implements it). RestoreTag asks it for owned tags.
type Restorer interface {
	Restore(ctx context.Context, items []owner.Item) ([]owner.Result, error)
}

// ErrOwnerRestores is returned by RestoreTag for a tag whose owner does
// not restore through refgc: restore it in the registry that owns it,
// which then publishes the tag.set.
var ErrOwnerRestores = errors.New("collector: the tag's owner keeps its time machine and has no restore service: restore the tag in the registry")

// ErrOwnerRefused is returned (wrapped, with the owner's reason) by
// RestoreTag when the owner refused to restore the tag.
var ErrOwnerRefused = errors.New("collector: the owner refused")

// restoreOwnedTag asks a tag's owner to make it current again, publishes
// the tag.set it answers with, and waits until the projection applied it.
func (c *Collector) restoreOwnedTag(ctx context.Context, ref events.NodeRef, origin string, o Owner) (Restored, error) {
	r, ok := o.(Restorer)
	if !ok {
		return Restored{}, fmt.Errorf("%w (%s, source %s)", ErrOwnerRestores, ref, origin)
	}
	in := refcount.Intent{ID: "restore-" + newID(), Node: ref, Origin: origin}
	start := time.Now()
	results, err := r.Restore(ctx, []owner.Item{{Intent: in.ID, Node: ref}})
	c.om.requests.Observe(time.Since(start).Seconds())
	if err != nil {
		c.om.errors.Inc()
		return Restored{}, fmt.Errorf("collector: restore %s through its owner: %w", ref, err)
	}
	if len(results) != 1 {
		return Restored{}, fmt.Errorf("collector: restore %s: %w: no answer", ref, owner.ErrProtocol)
	}
	res := results[0]
	c.om.results.WithLabelValues(string(res.Status)).Inc()
	switch res.Status {
	case owner.StatusRestored:
	case owner.StatusAbsent:
		return Restored{}, fmt.Errorf("%w: the owner of %s keeps no recoverable lifetime of it", ErrNotInTimeMachine, ref)
	default:
		return Restored{}, fmt.Errorf("%w to restore %s: %s %s", ErrOwnerRefused, ref, res.Reason, res.Detail)
	}
	evs := c.ownerStatements(in, res.Statements, c.cfg.Now().UTC())
	if err := c.publishApplied(ctx, evs, "a restored tag"); err != nil {
		return Restored{}, err
	}
	out := Restored{Tags: []string{ref.Name}}
	ni, ok, err := c.cfg.Projection.Get(ref)
	if err != nil {
		return out, err
	}
	if !ok || !ni.Present || len(ni.Holds) == 0 {
		return out, fmt.Errorf("collector: the owner restored %s, but the log has a later change of it than the owner's statement "+
			"(clocks apart?): the owner's own tag.set will say it", ref)
	}
	out.Manifest = ni.Holds[0]
	c.m.restores.Inc()
	return out, nil
}

// publishCorrections publishes what owners stated about objects they
// still use, and waits until the projection applied it. It runs after the
// round's removals are committed: a statement about a holder that the same
// round removed must not make that removal look raced.
func (c *Collector) publishCorrections(ctx context.Context, evs []events.Event) error {
	return c.publishApplied(ctx, evs, "owners' statements")
}

// ownedNode reports whether the projection's node goes to an owner.
func (c *Collector) ownedNode(n events.NodeRef) (bool, error) {
	if len(c.cfg.Owners) == 0 {
		return false, nil
	}
	ni, ok, err := c.cfg.Projection.Get(n)
	if err != nil || !ok {
		return false, err
	}
	return c.ownerOf(ni.Origin, n.Kind) != nil, nil
}

// ownedOnly keeps the candidates an owner takes, for a collector without
// storage, and the labels and legacy images nobody owns (bookkeeping
// only): the others (manifests, layer links and blobs stated by a source
// without an owner, or of a kind its owner does not take) have nowhere to
// be deleted, and are refused before any intent (RefuseNoOwner), every
// round they come up.
func (c *Collector) ownedOnly(cands []refcount.Candidate, rep *Report) []refcount.Candidate {
	kept := cands[:0]
	for _, cd := range cands {
		if c.ownerOf(cd.Origin, cd.Node.Kind) != nil || cd.Node.Kind == events.NodeLabel || cd.Node.Kind == events.NodeLegacy {
			// Owned, or bookkeeping only (no storage of its own).
			kept = append(kept, cd)
			continue
		}
		rep.Refused++
		c.m.refused.WithLabelValues(RefuseNoOwner).Inc()
		c.cfg.Logger.Warn("no owner takes this unreferenced object and there is no storage: left alone",
			"node", cd.Node.String(), "source", cd.Origin)
	}
	return kept
}

// ErrNoStorage is returned for a node that no owner takes when the
// collector was configured with Owners and no Storage.
var ErrNoStorage = errors.New("collector: no storage configured for a node no owner takes")

// noStorage is the Storage and StorageReader of a collector whose every
// object has an owner.
type noStorage struct{}

func (noStorage) DeleteRevision(context.Context, string, digest.Digest, []string) error {
	return ErrNoStorage
}
func (noStorage) DeleteLayerLink(context.Context, string, digest.Digest) error { return ErrNoStorage }
func (noStorage) PurgeBlob(context.Context, digest.Digest) error               { return ErrNoStorage }
func (noStorage) LinkTag(context.Context, string, string, digest.Digest) error { return ErrNoStorage }
func (noStorage) LinkRevision(context.Context, string, digest.Digest) error    { return ErrNoStorage }
func (noStorage) LinkLayer(context.Context, string, digest.Digest) error       { return ErrNoStorage }
func (noStorage) StatBlob(context.Context, digest.Digest) (int64, error)       { return 0, ErrNoStorage }
func (noStorage) Tags(context.Context, string, func(string, digest.Digest) error) error {
	return ErrNoStorage
}
func (noStorage) Revisions(context.Context, string, func(digest.Digest) error) error {
	return ErrNoStorage
}
func (noStorage) LinkModTime(context.Context, events.NodeRef) (time.Time, error) {
	return time.Time{}, ErrNoStorage
}
func (noStorage) ReadBlob(context.Context, digest.Digest, int64) ([]byte, error) {
	return nil, ErrNoStorage
}
