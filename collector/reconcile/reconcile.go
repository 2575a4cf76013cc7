// Package reconcile is the reconciler: it walks the registry storage,
// compares the graph it holds with the refcount projection, and turns what
// differs into events, as events/distribution turns notifications into
// events. It also verifies the projection and rebuilds it, from the event
// log or from storage.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, the reconciler runs beside the collector: it reads storage and
// the projection and writes to the log (eventlog.Log), never to storage,
// except to re-link what the collector unlinked (Healer).
//
// # Reconciliation
//
// A Reconciler walks the registry storage, computes the graph it really
// holds, compares it with the projection and, when asked to, publishes
// corrections through the event log. One pass:
//
//  1. AsOf = Log.CatchUp(): the projection holds everything the log held
//     when the walk began.
//  2. Walk repositories in parallel (bounded by Concurrency): per
//     repository its tags with their current targets, its manifest revisions
//     (each manifest read from storage and parsed with events.ParseManifest)
//     and its layer links. Each object is looked up in the projection as it
//     is seen; then the projection's present tags, revisions and layer links
//     of that repository that the walk did not see are missing from
//     storage.
//  3. Walk the blob store's prefix directories (concurrently) as spans of
//     about 64 digests, and compare each span's blobs, in digest
//     order, with the projection's blobs of the same span.
//  4. Iterate the projection for what no step above judged: the nodes of
//     repositories and blob directories that storage no longer lists.
//  5. With apply: confirm each presence correction against storage once
//     more, publish the corrections, and catch up.
//
// Memory: the walk holds one repository's listings and one span of a blob
// directory (a bounded number of digests, store.Driver.BlobSpans) per
// walker at a time, the names of the repositories and directories walked,
// and what it found wrong; never a set of the registry's objects. A pass
// over a registry ten times larger takes about the same memory.
//
// Invariants:
//   - The walk never deletes or writes storage. Its only output is events.
//   - A node that an event named after AsOf (NodeInfo.LastSeq > AsOf) is
//     never corrected: the registry said something newer than the walk
//     knows, and the next pass judges it.
//   - Absence is published as ObservedAbsent{Node, AsOf}, which the
//     projection ignores for a node named after AsOf or still leased; so a
//     push racing with the walk can never be undone by it.
//   - Presence is published as the ordinary state events (ManifestPushed
//     with the references parsed from storage, TagSet, BlobObserved with a
//     repository for a layer link, BlobObserved without one for blob data),
//     each confirmed against storage right before publishing, as is every
//     absence. Blob data that nothing links becomes a leased candidate: the
//     collector, not the walk, removes it once its lease and grace passed.
//   - Event ids are deterministic for a walk ("reconcile-<asOf>-<hash>"), so
//     a retried publish is deduplicated by the log.
//   - Nodes with a pending collector intent are left alone: the collector
//     finishes or undoes its own work.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/prom"
	"github.com/refgc/refgc/refcount"
)

// Drift types: the keys of Drift.Counts and Drift.Examples, and the values
// of the type label of refgc_reconcile_drift.
const (
	// DriftMissingFromProjection: storage holds an object (tag, revision,
	// layer link, linked blob data) that the projection lacks, or holds
	// differently (a tag pointing elsewhere, a revision with other references).
	DriftMissingFromProjection = "missing_from_projection"
	// DriftMissingFromStorage: the projection shows present an object that
	// storage does not hold.
	DriftMissingFromStorage = "missing_from_storage"
	// DriftCountMismatch: refcount.Check found a stored count, edge set or
	// queue entry that the declarations contradict. Only a rebuild mends it.
	DriftCountMismatch = "count_mismatch"
	// DriftOrphanData: blob data that no layer link or revision links,
	// unknown to the projection.
	DriftOrphanData = "orphan_data"
	// DriftUnreadableManifest: a revision whose manifest could not be read
	// or parsed. Reported, never corrected.
	DriftUnreadableManifest = "unreadable_manifest"
	// DriftUnlinkedLive: storage references an object the collector
	// unlinked (a tag pointing at a revision in the trash, a revision using
	// a layer link it removed): with apply, the reconciler links it again.
	DriftUnlinkedLive = "unlinked_live"
	// DriftLost: storage references an object whose data is gone (a tag
	// pointing at a revision, or a revision using a layer, whose blob data
	// was purged). Nothing but a new upload can mend it.
	DriftLost = "lost"
)

// DriftTypes lists the drift types in a stable order.
var DriftTypes = []string{DriftMissingFromProjection, DriftMissingFromStorage,
	DriftCountMismatch, DriftOrphanData, DriftUnreadableManifest, DriftUnlinkedLive, DriftLost}

// Reconciler defaults.
const (
	DefaultConcurrency = 8
	DefaultExamples    = 10
	DefaultBatchSize   = 256
)

// ErrNoLog is returned by Reconcile with apply when the reconciler has no Log.
var ErrNoLog = errors.New("collector: reconcile with apply needs a Log")

// IntentLister lists the intents other collectors shared
// (collector.KVIntents under --ha).
type IntentLister interface {
	ListIntents(ctx context.Context) ([]refcount.Intent, error)
}

// Healer writes back links the collector removed. store.Driver implements
// it. Both give an error matching fs.ErrNotExist when the data is gone.
type Healer interface {
	LinkRevision(ctx context.Context, repo string, d digest.Digest) error
	LinkLayer(ctx context.Context, repo string, d digest.Digest) error
}

// Store is what the reconciler reads from registry storage.
// store.Driver implements it. Each method gives an error matching
// fs.ErrNotExist for what storage does not hold.
type Store interface {
	Repositories(ctx context.Context, fn func(repo string) error) error
	Tags(ctx context.Context, repo string, fn func(tag string, current digest.Digest) error) error
	Revisions(ctx context.Context, repo string, fn func(d digest.Digest) error) error
	LayerLinks(ctx context.Context, repo string, fn func(d digest.Digest) error) error
	// BlobSpans calls fn for each prefix directory of the blob store as
	// consecutive spans, one call at a time: the digests with data there
	// whose encoded form e has from <= e < to, in digest order (from is empty
	// for a directory's first span, to for its last). ds is only valid
	// during the call.
	BlobSpans(ctx context.Context, fn func(alg digest.Algorithm, prefix, from, to string, ds []digest.Digest) error) error
	StatBlob(ctx context.Context, d digest.Digest) (int64, error)
	ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
	LinkModTime(ctx context.Context, n events.NodeRef) (time.Time, error)
}

// Config configures a Reconciler.
type Config struct {
	Projection *refcount.Projection
	Store      Store
	// Healer, if set, re-links what storage references but the collector
	// unlinked (default: Store, if it implements Healer). Only with apply.
	Healer Healer
	// Intents, if set, holds the intents of other collectors (under --ha):
	// their nodes are left alone as the projection's own intents are.
	Intents IntentLister
	// Log receives the corrections. Verify only needs its CatchUp, and works
	// without a Log (AsOf is then the projection's cursor).
	Log eventlog.Log
	// Concurrency bounds the repositories walked and the manifests read at
	// once (default 8).
	Concurrency int
	// Examples bounds the examples kept per drift type (default 10).
	Examples int
	// BatchSize bounds the events of one publish (default 256).
	BatchSize int
	// Owned, if set, says which nodes an owner deletes (the collector's
	// Owners): they live in that registry's database, not in storage, so
	// the walk never takes them for missing.
	Owned func(origin string, kind events.NodeKind) bool
	// Source names the reconciler in its events (default "refgc-reconciler").
	Source     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock (default time.Now). It stamps the corrections, whose
	// leases and the projection's lease checks follow it.
	Now func() time.Time
}

// Reconciler compares registry storage with the projection and corrects
// the projection through the log. One pass runs at a time.
type Reconciler struct {
	cfg  Config
	m    *reconcileMetrics
	mu   sync.Mutex
	prog *progress
	// inRebuild is set on the reconciler of a rebuild's walk, whose
	// progress is the rebuild's.
	inRebuild bool
}

// New returns a reconciler.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Projection == nil || cfg.Store == nil {
		return nil, errors.New("collector: reconciler needs Projection and Store")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Examples <= 0 {
		cfg.Examples = DefaultExamples
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Source == "" {
		cfg.Source = "refgc-reconciler"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Healer == nil {
		cfg.Healer, _ = cfg.Store.(Healer)
	}
	return &Reconciler{cfg: cfg, m: newReconcileMetrics(cfg.Registerer), prog: &progress{}}, nil
}

// Drift is what one pass found, and what it published.
type Drift struct {
	// AsOf is the log sequence the projection had caught up to when the walk began.
	AsOf uint64 `json:"asOf"`
	// Counts holds every drift type, zero included.
	Counts map[string]int `json:"counts"`
	// Examples holds up to Config.Examples descriptions per type,
	// sorted; which ones are kept when there are more depends on the walk's order.
	Examples map[string][]string `json:"examples,omitempty"`
	// Scanned counts what the walk saw: repositories, tags, revisions, layers, blobs.
	Scanned map[string]int `json:"scanned"`
	// Repos are the repositories walked, when the pass was limited to them.
	Repos []string `json:"repos,omitempty"`
	// Published is the number of correction events published.
	Published int `json:"published"`
	// Healed counts links written back (DriftUnlinkedLive mended).
	Healed   int           `json:"healed,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Clean reports whether the pass found no drift at all.
func (d Drift) Clean() bool {
	for _, n := range d.Counts {
		if n != 0 {
			return false
		}
	}
	return true
}

// Total is the sum of the drift counts.
func (d Drift) Total() int {
	n := 0
	for _, c := range d.Counts {
		n += c
	}
	return n
}

// Verify compares storage with the projection and publishes nothing: a
// clean Drift means the projection matches storage.
func (r *Reconciler) Verify(ctx context.Context) (Drift, error) { return r.Reconcile(ctx, false) }

// Reconcile runs one pass; with apply it publishes the corrections through
// the log, then a Reconciled event, and waits until the projection has
// applied them.
func (r *Reconciler) Reconcile(ctx context.Context, apply bool) (Drift, error) {
	return r.reconcile(ctx, apply, nil)
}

// ReconcileRepos is Reconcile limited to some repositories: their tags,
// revisions and layer links, and no blob data. It lifts the pauses of
// those repositories (refcount.Pause), not a pause of the whole registry.
func (r *Reconciler) ReconcileRepos(ctx context.Context, repos []string) (Drift, error) {
	if len(repos) == 0 {
		return r.Reconcile(ctx, true)
	}
	return r.reconcile(ctx, true, slices.Compact(slices.Sorted(slices.Values(repos))))
}

func (r *Reconciler) reconcile(ctx context.Context, apply bool, repos []string) (Drift, error) {
	if apply && r.cfg.Log == nil {
		return Drift{}, ErrNoLog
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	if repos == nil && !r.inRebuild { // a limited pass is short, and runs inside a collector pass
		pass := "verify"
		if apply {
			pass = "reconcile"
		}
		r.prog.start(pass)
		defer r.prog.stop()
	}
	d, err := r.pass(ctx, apply, repos)
	d.Duration = time.Since(start)
	for typ := range d.Examples {
		slices.Sort(d.Examples[typ]) // found concurrently, in no particular order
	}
	if err != nil {
		return d, err
	}
	r.m.passes.Inc()
	r.m.duration.Observe(d.Duration.Seconds())
	if repos == nil {
		for _, typ := range DriftTypes {
			r.m.drift.WithLabelValues(typ).Set(float64(d.Counts[typ]))
		}
	}
	r.cfg.Logger.Info("reconcile pass", "asOf", d.AsOf, "apply", apply, "drift", d.Total(),
		"published", d.Published, "duration", d.Duration)
	return d, nil
}

// fix is one correction: a drift finding and the event that mends it.
type fix struct {
	node events.NodeRef
	ev   events.Event // without id and time
}

// walk is the state of one pass.
type walk struct {
	r    *Reconciler
	asOf uint64
	now  time.Time
	sem  chan struct{} // bounds manifest reads

	mu    sync.Mutex
	drift Drift
	fixes []fix
	busy  map[events.NodeRef]bool // nodes with a pending collector intent
	repos map[string]bool         // the repositories of a limited pass; nil for all
	apply bool
	part  refcount.Partition // the share of the registry the projection holds
	// walked are the repositories, and dirs the blob directories
	// (algorithm/prefix), whose present nodes were compared with storage.
	walked, dirs map[string]bool
	// gone are present nodes storage did not hold, judged once the intents
	// recorded during the walk are known (markBusy).
	gone []refcount.NodeInfo
	// unheld are digests of layer links and revisions storage holds and
	// the projection does not: their blob data is linked, not orphaned.
	unheld map[digest.Digest]bool
}

// repoKinds are the node kinds a repository's walk judges.
var repoKinds = []events.NodeKind{events.NodeTag, events.NodeManifest, events.NodeLayer}

func (r *Reconciler) pass(ctx context.Context, apply bool, repos []string) (Drift, error) {
	w := &walk{r: r, now: r.cfg.Now(), sem: make(chan struct{}, r.cfg.Concurrency), apply: apply,
		part: r.cfg.Projection.Options().Partition,
		busy: map[events.NodeRef]bool{}, walked: map[string]bool{}, dirs: map[string]bool{}, unheld: map[digest.Digest]bool{}}
	w.drift = Drift{Counts: map[string]int{}, Examples: map[string][]string{}, Scanned: map[string]int{}}
	for _, typ := range DriftTypes {
		w.drift.Counts[typ] = 0
	}
	var err error
	if r.cfg.Log != nil {
		w.asOf, err = r.cfg.Log.CatchUp(ctx)
	} else {
		w.asOf, err = r.cfg.Projection.Cursor()
	}
	if err != nil {
		return w.drift, fmt.Errorf("collector: reconcile: catch up: %w", err)
	}
	w.drift.AsOf = w.asOf
	if err := w.markBusy(ctx); err != nil {
		return w.drift, err
	}
	if repos != nil {
		w.repos = map[string]bool{}
		for _, repo := range repos {
			w.repos[repo] = true
		}
		w.drift.Repos = repos
		w.drift.Scanned["repositories"] = len(repos)
		if err := w.walkSome(ctx, repos); err != nil {
			return w.drift, err
		}
	} else {
		// A partition walks its own share: a repository partition its
		// repositories, a digest partition its blob directories.
		if w.part.Role != refcount.RoleDigests {
			if err := w.walkRepos(ctx); err != nil {
				return w.drift, err
			}
		}
		if w.part.Role != refcount.RoleRepos {
			if err := w.walkBlobs(ctx); err != nil {
				return w.drift, err
			}
		}
	}
	if err := w.markBusy(ctx); err != nil { // intents recorded during the walk
		return w.drift, err
	}
	if err := w.absent(); err != nil {
		return w.drift, err
	}
	if repos == nil {
		ms, err := r.cfg.Projection.Check()
		if err != nil {
			return w.drift, fmt.Errorf("collector: reconcile: check: %w", err)
		}
		for _, m := range ms {
			w.note(DriftCountMismatch, m.String(), nil)
		}
	}
	if !apply {
		return w.drift, nil
	}
	fixes, err := w.confirm(ctx)
	if err != nil {
		return w.drift, err
	}
	// The Reconciled event goes last: it lifts the pauses this walk covers
	// only once its corrections are in the log before it.
	done := fix{ev: events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: w.asOf, Repos: repos,
		Partition: w.part.Name(), Layout: w.part.Layout()}}}
	if err := w.publish(ctx, append(fixes, done)); err != nil {
		return w.drift, err
	}
	w.drift.Published--
	return w.drift, nil
}

// walkSome walks the given repositories only.
func (w *walk) walkSome(ctx context.Context, repos []string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.r.cfg.Concurrency)
	for _, repo := range repos {
		if w.part.HasRepo(repo) {
			g.Go(func() error { return w.repo(gctx, repo) })
		}
	}
	return g.Wait()
}

func (w *walk) markBusy(ctx context.Context) error {
	ins, err := w.r.cfg.Projection.Intents()
	if err != nil {
		return fmt.Errorf("collector: reconcile: intents: %w", err)
	}
	if w.r.cfg.Intents != nil {
		shared, err := w.r.cfg.Intents.ListIntents(ctx)
		if err != nil {
			return fmt.Errorf("collector: reconcile: shared intents: %w", err)
		}
		ins = append(ins, shared...)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, in := range ins {
		w.busy[in.Node] = true
	}
	return nil
}

// note records one finding and, if f is not nil, its correction.
func (w *walk) note(typ, example string, f *fix) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.drift.Counts[typ]++
	if len(w.drift.Examples[typ]) < w.r.cfg.Examples {
		w.drift.Examples[typ] = append(w.drift.Examples[typ], example)
	}
	if f != nil {
		w.fixes = append(w.fixes, *f)
	}
}

func (w *walk) scanned(what string) {
	w.mu.Lock()
	w.drift.Scanned[what]++
	w.mu.Unlock()
	w.r.prog.saw(what, 1)
}

// lookup returns the projection's view of a node; changed is true when an
// event named it after the walk began (the walk's view may be stale).
func (w *walk) lookup(n events.NodeRef) (ni refcount.NodeInfo, ok, changed bool, err error) {
	ni, ok, err = w.r.cfg.Projection.Lookup(n)
	if err != nil {
		return ni, ok, false, fmt.Errorf("collector: reconcile: projection %s: %w", n, err)
	}
	return ni, ok, ok && ni.LastSeq > w.asOf, nil
}

func (w *walk) walkRepos(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.r.cfg.Concurrency)
	err := w.r.cfg.Store.Repositories(gctx, func(repo string) error {
		if !w.part.HasRepo(repo) {
			return nil
		}
		w.scanned("repositories")
		g.Go(func() error { return w.repo(gctx, repo) })
		return nil
	})
	if gerr := g.Wait(); gerr != nil {
		return gerr
	}
	if err != nil {
		return fmt.Errorf("collector: reconcile: list repositories: %w", err)
	}
	return nil
}

// repo walks one repository: tags, layer links, revisions (manifests read
// concurrently, bounded by the pass's semaphore); then what storage
// references but does not link.
func (w *walk) repo(ctx context.Context, repo string) error {
	st := w.r.cfg.Store
	tags := map[string]digest.Digest{}
	err := st.Tags(ctx, repo, func(tag string, cur digest.Digest) error {
		w.scanned("tags")
		tags[tag] = cur
		return w.checkTag(repo, tag, cur)
	})
	if err != nil {
		return fmt.Errorf("collector: reconcile: tags of %s: %w", repo, err)
	}
	layers := map[digest.Digest]bool{}
	err = st.LayerLinks(ctx, repo, func(d digest.Digest) error {
		w.scanned("layers")
		layers[d] = true
		return w.checkLayer(ctx, repo, d)
	})
	if err != nil {
		return fmt.Errorf("collector: reconcile: layer links of %s: %w", repo, err)
	}
	var revs []digest.Digest
	err = st.Revisions(ctx, repo, func(d digest.Digest) error {
		revs = append(revs, d)
		return nil
	})
	if err != nil {
		return fmt.Errorf("collector: reconcile: revisions of %s: %w", repo, err)
	}
	revSet := make(map[digest.Digest]bool, len(revs))
	for _, d := range revs {
		revSet[d] = true
	}
	w.mu.Lock()
	w.drift.Scanned["revisions"] += len(revs)
	w.mu.Unlock()
	w.r.prog.saw("revisions", len(revs))
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range revs {
		select {
		case w.sem <- struct{}{}:
		case <-gctx.Done():
			return errors.Join(g.Wait(), gctx.Err())
		}
		g.Go(func() error {
			defer func() { <-w.sem }()
			return w.checkRevision(gctx, repo, d, layers)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for tag, cur := range tags {
		if !revSet[cur] {
			n := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: cur}
			if err := w.unlinkedLive(ctx, n, "tag "+tag); err != nil {
				return err
			}
		}
	}
	seen := func(n events.NodeRef) bool {
		switch n.Kind {
		case events.NodeTag:
			_, ok := tags[n.Name]
			return ok
		case events.NodeManifest:
			return revSet[n.Digest]
		}
		return layers[n.Digest]
	}
	for _, kind := range repoKinds {
		if err := w.r.cfg.Projection.ForEachIn(kind, repo, func(ni refcount.NodeInfo) error {
			if !seen(ni.Node) {
				w.missing(ni)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("collector: reconcile: projection of %s: %w", repo, err)
		}
	}
	w.mu.Lock()
	w.walked[repo] = true
	w.mu.Unlock()
	return nil
}

// missing keeps a node the projection holds and storage did not show, if
// it is one the walk judges (see absent).
func (w *walk) missing(ni refcount.NodeInfo) {
	if !ni.Present || ni.LastSeq > w.asOf ||
		(w.r.cfg.Owned != nil && w.r.cfg.Owned(ni.Origin, ni.Node.Kind)) {
		return
	}
	switch ni.Node.Kind {
	case events.NodeTag, events.NodeManifest, events.NodeLayer, events.NodeBlob:
	default: // labels and legacy images have no storage object of their own
		return
	}
	w.mu.Lock()
	w.gone = append(w.gone, ni)
	w.mu.Unlock()
}

// stale reports, in a pass limited to some repositories (which follows
// refusals of the collector's storage check), whether the link of a node
// the projection holds present was written after the newest event that
// stated it present. Its presence is then stated again, at the walk's
// time, so that the storage check does not refuse it for ever.
func (w *walk) stale(ctx context.Context, n events.NodeRef, ni refcount.NodeInfo) (bool, error) {
	if w.repos == nil {
		return false, nil
	}
	mt, err := w.r.cfg.Store.LinkModTime(ctx, n)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("collector: reconcile: stat %s: %w", n, err)
	}
	return ni.Heard == nil || mt.After(*ni.Heard), nil
}

// unlinkedLive looks at an object that storage references (by what) but
// does not link: one the collector unlinked is linked again (with apply);
// one whose data is gone is lost. Anything else was deleted through the
// registry's API, and is left as it is.
func (w *walk) unlinkedLive(ctx context.Context, n events.NodeRef, by string) error {
	_, err := w.r.cfg.Store.StatBlob(ctx, n.Digest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		w.note(DriftLost, fmt.Sprintf("%s (used by %s): data purged", n, by), nil)
		return nil
	case err != nil:
		return fmt.Errorf("collector: reconcile: stat %s: %w", n, err)
	}
	tomb, err := w.r.cfg.Projection.Tombstoned(n)
	if err != nil || !tomb {
		return err
	}
	w.note(DriftUnlinkedLive, fmt.Sprintf("%s (used by %s)", n, by), nil)
	if !w.apply || w.r.cfg.Healer == nil {
		return nil
	}
	switch n.Kind {
	case events.NodeManifest:
		err = w.r.cfg.Healer.LinkRevision(ctx, n.Repo, n.Digest)
	case events.NodeLayer:
		err = w.r.cfg.Healer.LinkLayer(ctx, n.Repo, n.Digest)
	}
	if err != nil {
		return fmt.Errorf("collector: reconcile: heal %s: %w", n, err)
	}
	w.r.cfg.Logger.Warn("reconcile healed an object the collector had unlinked", "node", n.String(), "used_by", by)
	w.r.m.heals.Inc()
	// Its statement of presence revives it in the projection (the trash
	// entry or tombstone goes, and the collector's heal finds it linked).
	ev := events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Repo: n.Repo, Digest: n.Digest}}
	if n.Kind == events.NodeManifest {
		entry, ok, err := w.r.cfg.Projection.TrashEntryOf(n)
		if err != nil || !ok || entry.Manifest.Digest == "" {
			return err // a tag event names it, or the walk of its revision will
		}
		body := entry.Manifest
		body.Tag, body.TagExpires = "", time.Time{} // (an entry of schema 5 may keep an expiry)
		ev = events.Event{Kind: events.ManifestPushed, Manifest: &body}
	}
	w.mu.Lock()
	w.drift.Healed++
	w.fixes = append(w.fixes, fix{node: n, ev: ev})
	w.mu.Unlock()
	return nil
}

func (w *walk) checkTag(repo, tag string, cur digest.Digest) error {
	n := events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: tag}
	ni, ok, changed, err := w.lookup(n)
	if err != nil || changed {
		return err
	}
	target := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: cur}
	if ok && ni.Present && len(ni.Holds) == 1 && ni.Holds[0] == target {
		return nil
	}
	what := "absent"
	if ok && ni.Present && len(ni.Holds) > 0 {
		what = "points at " + ni.Holds[0].Digest.String()
	}
	w.note(DriftMissingFromProjection, fmt.Sprintf("%s → %s (projection: %s)", n, cur, what), &fix{node: n,
		ev: events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: cur}}})
	return nil
}

func (w *walk) checkRevision(ctx context.Context, repo string, d digest.Digest, layers map[digest.Digest]bool) error {
	n := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}
	ni, ok, changed, err := w.lookup(n)
	if err != nil {
		return err
	}
	if !ok || !ni.Present {
		w.noteUnheld(d)
	}
	b, err := w.r.cfg.Store.ReadBlob(ctx, d, collector.MaxManifestBytes)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.note(DriftUnreadableManifest, fmt.Sprintf("%s: %v", n, err), nil)
		return nil
	}
	refs, err := events.ParseManifest("", b)
	if err != nil {
		w.note(DriftUnreadableManifest, fmt.Sprintf("%s: %v", n, err), nil)
		return nil
	}
	for _, x := range refs.Blobs {
		if !layers[x.Digest] {
			l := events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: x.Digest}
			if err := w.unlinkedLive(ctx, l, "revision "+d.String()); err != nil {
				return err
			}
		}
	}
	if changed {
		return nil
	}
	m := events.Manifest{Repo: repo, Digest: d, MediaType: refs.MediaType, Size: int64(len(b)),
		Blobs: refs.Blobs, Children: refs.Children, Subject: refs.Subject}
	if ok && ni.Present {
		held, hok, err := w.r.cfg.Projection.Manifest(n)
		if err != nil {
			return fmt.Errorf("collector: reconcile: projection %s: %w", n, err)
		}
		what := "references differ from storage"
		if hok && !held.Unverified && sameRefs(held, m) {
			stale, err := w.stale(ctx, n, ni)
			if err != nil || !stale {
				return err
			}
			what = "written again since the projection heard of it"
		}
		w.note(DriftMissingFromProjection, fmt.Sprintf("%s: %s", n, what),
			&fix{node: n, ev: events.Event{Kind: events.ManifestPushed, Manifest: &m}})
		return nil
	}
	w.note(DriftMissingFromProjection, n.String(),
		&fix{node: n, ev: events.Event{Kind: events.ManifestPushed, Manifest: &m}})
	return nil
}

// sameRefs compares what two manifest bodies reference, as sets.
func sameRefs(a, b events.Manifest) bool {
	return sameDigests(a.Blobs, b.Blobs) && sameDigests(a.Children, b.Children) &&
		(a.Subject == nil) == (b.Subject == nil) && (a.Subject == nil || a.Subject.Digest == b.Subject.Digest)
}

func sameDigests(a, b []events.Descriptor) bool {
	set := make(map[digest.Digest]bool, len(a))
	for _, d := range a {
		set[d.Digest] = true
	}
	other := make(map[digest.Digest]bool, len(b))
	for _, d := range b {
		if !set[d.Digest] {
			return false
		}
		other[d.Digest] = true
	}
	return len(other) == len(set)
}

func (w *walk) checkLayer(ctx context.Context, repo string, d digest.Digest) error {
	n := events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: d}
	ni, ok, changed, err := w.lookup(n)
	if err == nil && (!ok || !ni.Present) {
		w.noteUnheld(d)
	}
	if err != nil || changed {
		return err
	}
	what := n.String()
	if ok && ni.Present {
		stale, err := w.stale(ctx, n, ni)
		if err != nil || !stale {
			return err
		}
		what += ": written again since the projection heard of it"
	}
	w.note(DriftMissingFromProjection, what, &fix{node: n,
		ev: events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Repo: repo, Digest: d}}})
	return nil
}

// noteUnheld records the digest of a link storage holds and the
// projection does not.
func (w *walk) noteUnheld(d digest.Digest) {
	w.mu.Lock()
	w.unheld[d] = true
	w.mu.Unlock()
}

// walkBlobs compares each span of each blob directory of storage with the
// projection's blobs of the same span: both are in digest order.
func (w *walk) walkBlobs(ctx context.Context) error {
	err := w.r.cfg.Store.BlobSpans(ctx, func(alg digest.Algorithm, prefix, from, to string, ds []digest.Digest) error {
		if !w.part.HasPrefix(prefix) {
			return nil
		}
		if w.part.Role == refcount.RoleDigests { // a directory may straddle two partitions
			ds = slices.DeleteFunc(ds, func(d digest.Digest) bool { return !w.part.HasDigest(d) })
		}
		w.mu.Lock()
		w.drift.Scanned["blobs"] += len(ds)
		w.mu.Unlock()
		w.r.prog.saw("blobs", len(ds))
		i := 0
		err := w.r.cfg.Projection.ForEachBlobSpan(alg, prefix, from, to, func(ni refcount.NodeInfo) error {
			for ; i < len(ds) && ds[i] < ni.Node.Digest; i++ {
				w.blobData(ds[i], nil)
			}
			if i < len(ds) && ds[i] == ni.Node.Digest {
				w.blobData(ds[i], &ni)
				i++
				return nil
			}
			w.missing(ni)
			return nil
		})
		if err != nil {
			return fmt.Errorf("collector: reconcile: projection blobs %s/%s [%s, %s): %w", alg, prefix, from, to, err)
		}
		for ; i < len(ds); i++ {
			w.blobData(ds[i], nil)
		}
		if to == "" { // the directory's last span
			w.mu.Lock()
			w.dirs[blobDir(alg, prefix)] = true
			w.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("collector: reconcile: list blobs: %w", err)
	}
	return nil
}

// blobDir names the blob directory of an algorithm and a prefix.
func blobDir(alg digest.Algorithm, prefix string) string { return string(alg) + "/" + prefix }

// blobData judges blob data storage holds, given the projection's node
// (nil if it has none).
func (w *walk) blobData(d digest.Digest, ni *refcount.NodeInfo) {
	if ni != nil && (ni.Present || ni.LastSeq > w.asOf) {
		return
	}
	n := events.NodeRef{Kind: events.NodeBlob, Digest: d}
	w.mu.Lock()
	linked := w.unheld[d]
	w.mu.Unlock()
	// Data is linked when a layer link or revision storage holds names it:
	// one the projection holds declares an edge to it (its count), one it
	// does not was noted by the repository's walk (unheld).
	typ := DriftMissingFromProjection
	if !linked && (ni == nil || ni.Count == 0) {
		typ = DriftOrphanData
	}
	w.note(typ, n.String(), &fix{node: n,
		ev: events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: d}}})
}

// absent finds the nodes the projection shows present that storage did
// not hold: those the walk kept (gone), and those of the repositories and
// blob directories it did not list at all. It runs after the walk, once
// the intents recorded meanwhile are known.
func (w *walk) absent() error {
	if w.repos == nil { // a limited pass walked every repository it names
		if err := w.unlisted(); err != nil {
			return err
		}
	}
	for _, ni := range w.gone {
		if w.busy[ni.Node] {
			continue
		}
		n := ni.Node
		example := n.String()
		if ni.Lease != nil && ni.Lease.After(w.now) {
			example += " (leased: ignored until " + ni.Lease.Format(time.RFC3339) + ")"
		}
		w.note(DriftMissingFromStorage, example, &fix{node: n, ev: events.Event{Kind: events.ObservedAbsent,
			Absent: &events.Observation{Node: n, AsOf: w.asOf}}})
	}
	w.gone = nil
	return nil
}

// unlisted keeps the present nodes of the repositories and blob
// directories that storage did not list: the walk judged all others.
func (w *walk) unlisted() error {
	walked := func(repo string) bool { return w.walked[repo] }
	keep := func(ni refcount.NodeInfo) error { w.missing(ni); return nil }
	for _, kind := range repoKinds {
		if err := w.r.cfg.Projection.ForEachExcept(kind, walked, keep); err != nil {
			return fmt.Errorf("collector: reconcile: iterate projection: %w", err)
		}
	}
	err := w.r.cfg.Projection.ForEachIn(events.NodeBlob, "", func(ni refcount.NodeInfo) error {
		if !w.dirs[blobDir(ni.Node.Digest.Algorithm(), prefixOf(ni.Node.Digest))] {
			w.missing(ni)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("collector: reconcile: iterate projection: %w", err)
	}
	return nil
}

// prefixOf is the blob directory prefix of a digest: the first two digits
// of its encoded form.
func prefixOf(d digest.Digest) string {
	e := d.Encoded()
	if len(e) < 2 {
		return e
	}
	return e[:2]
}

// confirm re-reads storage for every correction and keeps those that
// still hold: presence that is still there (with blob sizes filled in), and
// absence that is still absent (so that a listing which missed an object
// cannot have it collected). It drops every correction for a node that an
// event named since the walk began.
func (w *walk) confirm(ctx context.Context) ([]fix, error) {
	st := w.r.cfg.Store
	type repoState struct {
		tags                           map[string]digest.Digest
		revs, layers                   map[digest.Digest]bool
		wantTags, wantRevs, wantLayers bool
	}
	repos := map[string]*repoState{}
	for _, f := range w.fixes {
		if f.node.Kind == events.NodeBlob {
			continue
		}
		rs := repos[f.node.Repo]
		if rs == nil {
			rs = &repoState{tags: map[string]digest.Digest{}, revs: map[digest.Digest]bool{}, layers: map[digest.Digest]bool{}}
			repos[f.node.Repo] = rs
		}
		switch f.node.Kind {
		case events.NodeTag:
			rs.wantTags = true
		case events.NodeManifest:
			rs.wantRevs = true
		case events.NodeLayer:
			rs.wantLayers = true
		}
	}
	// A repository that is gone lists nothing, without an error; an error,
	// even one wrapping "not exist", is a listing cut short, and what it
	// missed would confirm an absence that is not there.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.r.cfg.Concurrency)
	for repo, rs := range repos {
		g.Go(func() error {
			if rs.wantTags {
				if err := st.Tags(gctx, repo, func(tag string, cur digest.Digest) error {
					rs.tags[tag] = cur
					return nil
				}); err != nil {
					return fmt.Errorf("collector: reconcile: confirm tags of %s: %w", repo, err)
				}
			}
			if rs.wantRevs {
				if err := st.Revisions(gctx, repo, func(d digest.Digest) error {
					rs.revs[d] = true
					return nil
				}); err != nil {
					return fmt.Errorf("collector: reconcile: confirm revisions of %s: %w", repo, err)
				}
			}
			if rs.wantLayers {
				if err := st.LayerLinks(gctx, repo, func(d digest.Digest) error {
					rs.layers[d] = true
					return nil
				}); err != nil {
					return fmt.Errorf("collector: reconcile: confirm layer links of %s: %w", repo, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make([]fix, 0, len(w.fixes))
	for _, f := range w.fixes {
		absent := f.ev.Kind == events.ObservedAbsent
		var there bool
		switch f.node.Kind {
		case events.NodeTag:
			cur, ok := repos[f.node.Repo].tags[f.node.Name]
			there = ok && (absent || cur == f.ev.Tag.Digest)
		case events.NodeManifest:
			there = repos[f.node.Repo].revs[f.node.Digest]
		case events.NodeLayer:
			there = repos[f.node.Repo].layers[f.node.Digest]
		case events.NodeBlob:
			size, err := st.StatBlob(ctx, f.node.Digest)
			switch {
			case err == nil:
				there = true
				if !absent {
					f.ev.Blob.Size = size
				}
			case !errors.Is(err, fs.ErrNotExist):
				return nil, fmt.Errorf("collector: reconcile: confirm %s: %w", f.node, err)
			}
		}
		if there == absent {
			continue
		}
		if f.node.Kind == events.NodeLayer && !absent {
			// A dangling link is still a link: its size stays unknown.
			if size, err := st.StatBlob(ctx, f.node.Digest); err == nil {
				f.ev.Blob.Size = size
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("collector: reconcile: confirm %s: %w", f.node, err)
			}
		}
		if _, _, changed, err := w.lookup(f.node); err != nil {
			return nil, err
		} else if changed {
			continue
		}
		out = append(out, f)
	}
	return out, nil
}

// publish sends the corrections in batches and waits until the projection
// applied them.
func (w *walk) publish(ctx context.Context, fixes []fix) error {
	evs := make([]events.Event, len(fixes))
	for i, f := range fixes {
		e := f.ev
		e.V = events.Version
		e.ID = correctionID(w.asOf, f)
		e.Time = w.now
		e.Source = w.r.cfg.Source
		evs[i] = e
	}
	for len(evs) > 0 {
		n := min(len(evs), w.r.cfg.BatchSize)
		if err := w.r.cfg.Log.Publish(ctx, evs[:n]); err != nil {
			return fmt.Errorf("collector: reconcile: publish corrections: %w", err)
		}
		for _, e := range evs[:n] {
			w.r.m.corrections.WithLabelValues(string(e.Kind)).Inc()
		}
		w.drift.Published += n
		evs = evs[n:]
	}
	if _, err := w.r.cfg.Log.CatchUp(ctx); err != nil {
		return fmt.Errorf("collector: reconcile: catch up after publishing: %w", err)
	}
	return nil
}

// correctionID names a correction deterministically within a walk.
func correctionID(asOf uint64, f fix) string {
	h := sha256.New()
	h.Write([]byte(f.ev.Kind))
	h.Write([]byte{0})
	h.Write([]byte(f.node.String()))
	if f.ev.Tag != nil {
		h.Write([]byte{0})
		h.Write([]byte(f.ev.Tag.Digest))
	}
	return fmt.Sprintf("reconcile-%d-%s", asOf, hex.EncodeToString(h.Sum(nil)[:12]))
}

// String summarises the drift on one line.
func (d Drift) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "asOf %d:", d.AsOf)
	for _, typ := range DriftTypes {
		fmt.Fprintf(&b, " %s=%d", typ, d.Counts[typ])
	}
	fmt.Fprintf(&b, " published=%d", d.Published)
	for _, typ := range DriftTypes {
		for _, ex := range d.Examples[typ] {
			fmt.Fprintf(&b, "\n  %s: %s", typ, ex)
		}
	}
	return b.String()
}

type reconcileMetrics struct {
	heals       prometheus.Counter
	drift       *prometheus.GaugeVec
	passes      prometheus.Counter
	duration    prometheus.Histogram
	corrections *prometheus.CounterVec
}

func newReconcileMetrics(reg prometheus.Registerer) *reconcileMetrics {
	m := &reconcileMetrics{
		heals: prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_reconcile_heals_total",
			Help: "Links the reconciler wrote back because storage uses what the collector had unlinked."}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_reconcile_drift",
			Help: "Differences between storage and the projection found by the last reconcile pass, by type."}, []string{"type"}),
		passes: prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_reconcile_passes_total",
			Help: "Reconcile passes completed (verify included)."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refgc_reconcile_duration_seconds",
			Help: "Duration of reconcile passes.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
		corrections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_reconcile_corrections_total",
			Help: "Correction events published by the reconciler, by event kind."}, []string{"kind"}),
	}
	m.heals = prom.Register(reg, m.heals)
	m.drift = prom.Register(reg, m.drift)
	m.passes = prom.Register(reg, m.passes)
	m.duration = prom.Register(reg, m.duration)
	m.corrections = prom.Register(reg, m.corrections)
	return m
}
