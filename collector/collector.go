// Package collector deletes what the projection says nothing references, a
// little at a time, while the registry keeps serving; and restores what it
// unlinked, until the data is purged.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the collector: it reads the refcount projection,
// acts on storage through its own small interfaces (store.Driver implements
// them), and records what it did as events in the log (eventlog.Log).
//
// # The drain
//
// One pass repeats rounds until a round changes nothing:
//
//  1. Catch up: wait until the projection has applied everything the event
//     log held at that moment (Log.CatchUp), and remember that sequence.
//  2. Take a round's candidates among the oldest, spread over the storage
//     directories they are removed from (see directory): as many as the
//     last round's removal rate lets go in RoundTime, up to BatchSize
//     (roundSize). Unlink candidates then pass the storage check
//     (confirm.go).
//  3. Re-check them all in one write transaction against the projection at
//     or past that sequence, and record an intent for each one still
//     eligible (refcount.BeginCollectBatch).
//  4. Act on storage, concurrently and rate-limited: unlink manifest
//     revisions (with their tags' history entries) and layer links; purge
//     blob data. Right before each storage operation, a last look at the
//     projection passes over a removal that raced since the re-check
//     (refcount.Projection.Raced): what the projection has applied by then
//     stops the removal rather than has it undone, however long the round
//     (an owner checks for itself; recovery does not look, see act).
//     Blob purges have their own round, with a fresh catch-up right before
//     it.
//  5. Publish one Collected event per removal done through the log and
//     wait until the projection applied them (the cascading releases
//     follow). Applying a Collected event drops its intent with the
//     removal it commits; a removal that raced with a new reference is
//     undone, and its intent dropped after, with those passed over.
//
// Step 5 of a round (its commit) runs beside the next round, whose
// candidates leave out the nodes being committed; the next round's commit
// waits until it has landed, so one commit runs at a time, in round order.
// The next round's re-check may run before the commit has: it needs
// nothing of it. The nodes being committed are not candidates; what they
// held stays held until they are applied gone (and then waits out the
// grace); one of them that raced is restored by its own commit. The one
// thing a commit can add that a re-check must see, an owner's statement
// about an object it still uses, makes the next re-check wait for the
// commit to land.
//
// # Invariants
//
//   - Nothing is deleted that the projection, caught up with the log as of
//     the re-check, does not show as unheld, unleased and past its grace.
//   - Deleting happens in two steps: unlinking removes an object from the
//     registry's API; its data is purged only after the trash retention,
//     and any push, mount or pull of the digest since (a new lease) cancels
//     the purge. Until the purge, Restore brings a manifest back whole.
//   - Every storage operation is idempotent and preceded by a durable
//     intent. A crash anywhere leaves intents that Recover finishes: an
//     intent whose node is still collectable is done again; one whose node
//     was re-referenced in the meantime is undone (its links restored); one
//     already committed is dropped.
//   - The collector never changes the projection directly: every change
//     travels through the log, so replaying the log rebuilds the same state.
package collector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// Storage is what the collector does to registry storage. Every method is
// idempotent. store.Driver implements it.
type Storage interface {
	DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error
	DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error
	PurgeBlob(ctx context.Context, d digest.Digest) error
	LinkTag(ctx context.Context, repo, tag string, d digest.Digest) error
	LinkRevision(ctx context.Context, repo string, d digest.Digest) error
	LinkLayer(ctx context.Context, repo string, d digest.Digest) error
	StatBlob(ctx context.Context, d digest.Digest) (int64, error)
}

// ErrNotInTrash is returned by Restore for a manifest that is not unlinked
// and restorable (never unlinked, already restored, or purged).
var ErrNotInTrash = errors.New("collector: manifest not in trash")

// ErrDataGone is returned by Restore when data the manifest needs was purged.
var ErrDataGone = errors.New("collector: data already purged")

// Config configures a Collector.
type Config struct {
	Projection *refcount.Projection
	Storage    Storage
	// Reader is what the storage check reads (default: Storage, which must
	// then implement StorageReader). Required unless DryRun.
	Reader StorageReader
	Log    eventlog.Log
	// Reconcile, if set, reconciles the given repositories (all of them
	// when repos is empty) and waits until its corrections and its
	// Reconciled event are applied. A pass calls it to lift pauses.
	Reconcile func(ctx context.Context, repos []string) error
	// QuietAfter is how long a registry instance may send nothing before
	// it stops bounding collection (default DefaultQuietAfter).
	QuietAfter time.Duration
	// Started is when this refgc started (default Now() at New): every
	// registry instance bounds collection for QuietAfter after it, so that
	// each has the time to redeliver what it held while refgc was down.
	Started time.Time
	// Intents, if set, keeps a copy of every intent where the next active
	// collector finds it (under --ha, KVIntents); nil keeps them in the
	// projection only.
	Intents IntentStore
	// ClockSkew is how much later than the newest event about it a link
	// may have been written before the storage check refuses it, to allow
	// for the registry's and the storage's clocks (default DefaultClockSkew).
	ClockSkew time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// BatchSize bounds the candidates of one round (DefaultBatchSize).
	BatchSize int
	// RoundTime is about the longest a round's removals take
	// (DefaultRoundTime; 0 means the default): a round takes as many
	// candidates as the last round of its kind removed from storage in
	// this time, at least 64 and at most BatchSize (roundSize). So on slow
	// storage or under a rate limit the time between a round's storage
	// check and its last removal stays about RoundTime, unless 64
	// removals take longer; on fast storage rounds grow, with fewer fsyncs
	// per removal. Rounds that go to owners keep the first size (256).
	RoundTime time.Duration
	// Concurrency bounds storage operations in flight (DefaultConcurrency).
	Concurrency int
	// RateLimit bounds storage operations per second (0: unlimited).
	RateLimit float64
	// ExpireTags removes tags whose expiry has passed (from the
	// quay.expires-after label, or a native event's tag expiry); without
	// it expiries are recorded but not acted on. Purged repositories' tags
	// are removed either way.
	ExpireTags bool
	// DryRun reports what a pass would delete without deleting anything.
	DryRun bool
	// Owners routes, by event source, the nodes that a registry keeps in
	// its own database to their owner (see owners.go); nodes of other
	// sources, and other kinds, go to Storage.
	Owners map[string]OwnerRoute
	// Dirs, if set, removes the empty directories that unlinks and purges
	// leave (the filesystem driver's store.EmptyDirs; nil for object
	// stores, which have none). See dirs.go.
	Dirs EmptyDirs
	// Barrier, if set, is waited on before blob data is purged: it
	// returns once every statement that may hold a blob, made from the
	// events the log held at the call, is in the log (a digest partition
	// waits on the repository partitions' relays: eventlog.Barrier). A
	// purge round whose barrier fails purges nothing.
	Barrier func(ctx context.Context) error
	// Source names this collector in the events it publishes.
	Source     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Collector defaults.
const (
	DefaultQuietAfter  = 5 * time.Minute
	DefaultClockSkew   = 2 * time.Second
	DefaultBatchSize   = 1024
	DefaultRoundTime   = 500 * time.Millisecond
	DefaultConcurrency = 8
)

// Round sizes (see roundSize): a round's candidates while no removal rate
// is known, and the fewest a round takes on slow storage or under a rate
// limit, since each unlink round lists the repositories it touches.
const (
	firstRoundSize = 256
	minRoundSize   = 64
)

// roundSize is how many candidates a round takes: as many as rate
// (removals per second, 0 when not known) lets go in roundTime, at least
// minRoundSize and concurrency (every operation slot busy), at most batch.
func roundSize(batch, concurrency int, rate float64, roundTime time.Duration) int {
	if !(rate > 0) { // not known, or NaN
		return min(batch, firstRoundSize)
	}
	n := rate * roundTime.Seconds()
	if n >= float64(batch) { // also +Inf: no conversion overflow
		return batch
	}
	return min(batch, max(concurrency, minRoundSize, int(n)))
}

// spreadWindow is how many rounds' worth of the oldest candidates a round
// chooses its own among, spread over directories (see directory).
const spreadWindow = 16

// directory names where a node's storage operation takes place in
// Distribution's layout: a repository's revisions directory, its layer
// links directory, a blob's two-character prefix directory (on an object
// store, the key prefix). Operations in flight in the same directory wait
// on each other: the filesystem locks a directory for each entry removed
// from it, and object stores limit the requests per prefix. So a round
// takes its candidates among spreadWindow rounds' worth of the oldest, a
// directory at a time in turn, and starts them in that order; half as
// many directories take turns as the round has operations in flight
// (rounded up, at least two), so that two operations started one after
// the other at most share a directory, and a round touches no more
// repositories than that needs (the storage check lists each one). Labels and legacy images have no storage.
func directory(n events.NodeRef) string {
	switch n.Kind {
	case events.NodeManifest, events.NodeLayer:
		return string(n.Kind) + "\x00" + n.Repo
	case events.NodeBlob:
		d := string(n.Digest)
		if i := strings.IndexByte(d, ':'); i >= 0 && len(d) >= i+3 {
			return d[:i+3] // the algorithm and two characters
		}
	}
	return string(n.Kind)
}

// Collector drains the zero-ref queue.
type Collector struct {
	cfg     Config
	limiter *rate.Limiter
	m       *metrics
	om      *ownerMetrics
	// landing is the last round's commit, under way beside the next
	// round (land waits for it).
	landing     *landing
	failing     map[events.NodeRef]bool // nodes whose storage operation failed in this pass
	rate        [2]float64              // removals per second of the last full unlink [0] and purge [1] rounds (0: none yet), for roundSize
	mu          sync.Mutex              // one pass at a time
	dirs        dirQueue                // where removals may have left empty directories
	started     time.Time               // sources count as delivering at least until QuietAfter past it
	storageless bool                    // no Storage: every object goes to an owner, or stays
}

// landing is a round's commit running beside the next round: its
// removals are published, applied and settled while the next round
// chooses, checks and removes others. Only its goroutine writes to it
// until done is closed.
type landing struct {
	nodes map[events.NodeRef]bool // what it commits: no candidates until it lands
	// statements is set when it publishes owners' statements: the next
	// re-check waits for them.
	statements bool
	rep        Report // what it counted, added to the pass's by land
	err        error
	done       chan struct{}
}

// takeOff commits a round's removals beside the next round.
func (c *Collector) takeOff(ctx context.Context, done, passed []refcount.Intent, corrections []events.Event) {
	l := &landing{nodes: make(map[events.NodeRef]bool, len(done)), statements: len(corrections) > 0, done: make(chan struct{})}
	for _, in := range done {
		l.nodes[in.Node] = true
	}
	c.landing = l
	go func() {
		defer close(l.done)
		l.err = c.commit(ctx, done, passed, corrections, &l.rep)
	}()
}

// land waits for the commit under way, if any, and adds what it counted
// to rep.
func (c *Collector) land(rep *Report) error {
	l := c.landing
	if l == nil {
		return nil
	}
	<-l.done
	c.landing = nil
	rep.add(l.rep)
	return l.err
}

// failed reports whether the commit has ended in an error.
func (l *landing) failed() bool {
	select {
	case <-l.done:
		return l.err != nil
	default:
		return false
	}
}

// landingNode reports whether n's removal is being committed now.
func (c *Collector) landingNode(n events.NodeRef) bool {
	return c.landing != nil && c.landing.nodes[n]
}

// New returns a collector.
func New(cfg Config) (*Collector, error) {
	if cfg.Projection == nil || cfg.Log == nil || (cfg.Storage == nil && !cfg.DryRun && len(cfg.Owners) == 0) {
		return nil, errors.New("collector: Projection, Log and Storage (or Owners) are required")
	}
	storageless := cfg.Storage == nil && len(cfg.Owners) > 0
	if storageless {
		// Every object has an owner of its own: what none takes stays.
		cfg.Storage, cfg.Reader = noStorage{}, noStorage{}
	}
	if cfg.Reader == nil {
		cfg.Reader, _ = cfg.Storage.(StorageReader)
	}
	if cfg.Reader == nil && !cfg.DryRun {
		return nil, errors.New("collector: the storage check needs a Reader (Storage does not implement StorageReader)")
	}
	if cfg.QuietAfter <= 0 {
		cfg.QuietAfter = DefaultQuietAfter
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.RoundTime <= 0 {
		cfg.RoundTime = DefaultRoundTime
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Source == "" {
		cfg.Source = "refgc-collector"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Started.IsZero() {
		cfg.Started = cfg.Now()
	}
	c := &Collector{cfg: cfg, m: newMetrics(cfg.Registerer), om: newOwnerMetrics(cfg.Registerer), started: cfg.Started,
		storageless: storageless}
	if cfg.RateLimit > 0 {
		burst := int(cfg.RateLimit)
		if burst < 1 {
			burst = 1
		}
		c.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), burst)
	}
	return c, nil
}

// Removal is one object a pass removed (or, in a dry run, would remove).
type Removal struct {
	Node  events.NodeRef `json:"node"`
	Purge bool           `json:"purge,omitempty"`
	Bytes int64          `json:"bytes,omitempty"`
}

// Report is what a pass did.
type Report struct {
	Removed  []Removal `json:"removed,omitempty"`
	Unlinked int       `json:"unlinked"`
	Purged   int       `json:"purged"`
	// UnlinkedBytes is the size of what was unlinked (manifests, layer
	// links): restorable, not yet freed. PurgedBytes is the blob data
	// deleted: the space freed. A dry run counts what a pass would do now.
	UnlinkedBytes int64 `json:"unlinkedBytes"`
	PurgedBytes   int64 `json:"purgedBytes"`
	Refused       int   `json:"refused"`  // candidates the storage check, the re-check or the last look turned down
	Restored      int   `json:"restored"` // removals undone because they raced
	Healed        int   `json:"healed"`   // unlinked objects re-linked after a late event
	Expired       int   `json:"expired"`  // tags removed because their expiry or their repository's purge passed
	Released      int   `json:"released"` // tags forgotten at the end of their time machine window
	Lost          int   `json:"lost"`     // objects proved live after their data was purged
	// Unavailable is the longest time between an unlink and its heal among
	// this pass's heals: how long a live object could not be pulled.
	Unavailable time.Duration `json:"unavailable,omitempty"`
	// HealLag is the longest time between receiving a notification that
	// proved an unlinked object live and healing it: refgc's own share of
	// Unavailable (the rest is the registry's delivery delay).
	HealLag time.Duration `json:"healLag,omitempty"`
	// View is how complete the projection's view was at the pass's start.
	View     *View         `json:"view,omitempty"`
	Errors   int           `json:"errors"`
	Rounds   int           `json:"rounds"`
	Duration time.Duration `json:"duration"`
	// CheckDuration is the time the storage check took, within Duration.
	CheckDuration time.Duration `json:"checkDuration"`
	// StorageDuration is the time the storage operations took (unlinks,
	// purges, owners' removals, all in flight together), within Duration.
	StorageDuration time.Duration `json:"storageDuration"`
}

// add counts into r what a round's commit counted in o.
func (r *Report) add(o Report) {
	r.Removed = append(r.Removed, o.Removed...)
	r.Unlinked += o.Unlinked
	r.Purged += o.Purged
	r.UnlinkedBytes += o.UnlinkedBytes
	r.PurgedBytes += o.PurgedBytes
	r.Refused += o.Refused
	r.Restored += o.Restored
	r.Errors += o.Errors
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Pass drains the queue until a round changes nothing. In a dry run it
// only lists the candidates eligible now.
func (c *Collector) Pass(ctx context.Context) (rep Report, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := time.Now()
	// rep is the named result, so that the duration set here is returned.
	defer func() {
		rep.Duration = time.Since(start)
		c.m.passSeconds.Observe(rep.Duration.Seconds())
	}()
	// No commit outlives its pass (this runs first).
	defer func() {
		if lerr := c.land(&rep); err == nil {
			err = lerr
		} else if lerr != nil {
			c.cfg.Logger.Error("a round's commit failed; its intents stay for the next pass", "err", lerr)
		}
	}()
	c.failing = map[events.NodeRef]bool{}
	if c.cfg.DryRun {
		return c.plan(ctx, &rep)
	}
	if err := c.recover(ctx, &rep); err != nil {
		return rep, err
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return rep, fmt.Errorf("collector: catch up: %w", err)
	}
	if err := c.heal(ctx, &rep); err != nil {
		return rep, err
	}
	v, err := c.view(ctx)
	if err != nil {
		return rep, err
	}
	rep.View = &v
	c.observe(v, c.cfg.Now())
	if v.Whole {
		return rep, fmt.Errorf("%w: %s", ErrPaused, v.Paused[0].Reason)
	}
	if err := c.lifetimes(ctx, &rep, v); err != nil {
		return rep, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Rounds++
		unlinked, err := c.round(ctx, &rep, false)
		if err != nil {
			return rep, err
		}
		purged := 0
		if len(rep.View.Paused) == 0 {
			if purged, err = c.round(ctx, &rep, true); err != nil {
				return rep, err
			}
		}
		if unlinked+purged == 0 {
			break
		}
	}
	if err := c.land(&rep); err != nil {
		return rep, err
	}
	if _, err := c.cfg.Projection.PruneTrash(c.cfg.Now().Add(-c.cfg.Projection.Options().Retention)); err != nil {
		return rep, err
	}
	c.pruneDirs(ctx)
	return rep, nil
}

// plan lists what a pass would remove now, with sizes.
func (c *Collector) plan(ctx context.Context, rep *Report) (Report, error) {
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return *rep, err
	}
	v, err := c.View(c.cfg.Now())
	if err != nil {
		return *rep, err
	}
	rep.View = &v
	cands, err := c.cfg.Projection.Candidates(v.Bound, 1<<30)
	if err != nil {
		return *rep, err
	}
	for _, cd := range cands {
		r := Removal{Node: cd.Node, Purge: cd.Node.Kind == events.NodeBlob, Bytes: cd.Size}
		if r.Purge && cd.EligibleAt.After(v.PurgeBound) {
			continue
		}
		rep.Removed = append(rep.Removed, r)
		if r.Purge {
			rep.Purged++
			rep.PurgedBytes += cd.Size
		} else {
			rep.Unlinked++
			rep.UnlinkedBytes += cd.Size
		}
	}
	return *rep, nil
}

// round does one catch-up, re-check, act, commit cycle over either the
// unlink candidates or the purge candidates, and returns how many it removed.
func (c *Collector) round(ctx context.Context, rep *Report, purge bool) (int, error) {
	if purge && c.cfg.Barrier != nil {
		if err := c.cfg.Barrier(ctx); err != nil {
			c.m.barrierFailures.Inc()
			c.cfg.Logger.Warn("purges wait: the barrier did not pass", "err", err)
			return 0, nil
		}
	}
	seq, err := c.cfg.Log.CatchUp(ctx)
	if err != nil {
		return 0, fmt.Errorf("collector: catch up: %w", err)
	}
	if err := c.heal(ctx, rep); err != nil {
		return 0, err
	}
	// The view may have changed since the pass began: a round never acts
	// on more than the view of its own moment allows.
	v, err := c.View(c.cfg.Now())
	if err != nil {
		return 0, err
	}
	if v.Whole || (purge && len(v.Paused)+len(v.Silent) > 0) {
		return 0, nil
	}
	paused := map[string]bool{}
	for _, p := range v.Paused {
		paused[p.Repo] = true
	}
	bound := v.Bound
	if purge {
		bound = v.PurgeBound
	}
	// The removals of the commit under way are still candidates until it
	// lands: the round asks for as many more, and leaves them out.
	var landing int
	if c.landing != nil {
		landing = len(c.landing.nodes)
	}
	kind := 0
	if purge {
		kind = 1
	}
	size := roundSize(c.cfg.BatchSize, c.cfg.Concurrency, c.rate[kind], c.cfg.RoundTime)
	cands, err := c.cfg.Projection.CandidatesSpread(bound, size+landing+len(c.failing), spreadWindow*size+landing+len(c.failing),
		max(2, (c.cfg.Concurrency+1)/2), func(k events.NodeKind) bool { return (k == events.NodeBlob) == purge }, directory)
	if err != nil {
		return 0, err
	}
	cands = slices.DeleteFunc(cands, func(cd refcount.Candidate) bool {
		return (paused[cd.Node.Repo] && cd.Node.Repo != "") || c.landingNode(cd.Node) || c.failing[cd.Node]
	})
	cands = cands[:min(len(cands), size)]
	if c.storageless {
		cands = c.ownedOnly(cands, rep)
	}
	if len(cands) == 0 {
		return 0, nil
	}
	if !purge {
		checkStart := time.Now()
		refusals, err := c.confirm(ctx, cands)
		rep.CheckDuration += time.Since(checkStart)
		c.m.checkSeconds.Observe(time.Since(checkStart).Seconds())
		if err != nil {
			return 0, err
		}
		if err := c.refuse(ctx, refusals, rep); err != nil {
			return 0, err
		}
		out := map[events.NodeRef]bool{}
		for _, r := range refusals {
			out[r.node] = true
		}
		cands = slices.DeleteFunc(cands, func(cd refcount.Candidate) bool { return out[cd.Node] })
	}
	refs := make([]events.NodeRef, len(cands))
	ids := make([]string, len(cands))
	for i, cd := range cands {
		refs[i], ids[i] = cd.Node, newID()
	}
	if len(refs) == 0 {
		return 0, nil
	}
	// The last round's commit may still be under way (see the package
	// doc): the re-check waits for it only if it publishes owners'
	// statements, and a round does not go on after a commit that failed.
	if c.landing != nil && (c.landing.statements || c.landing.failed()) {
		// An owner's statement about an object it still uses may hold a
		// candidate: the re-check sees it applied.
		if err := c.land(rep); err != nil {
			return 0, err
		}
	}
	intents, refused, err := c.cfg.Projection.BeginCollectBatch(ids, refs, bound, seq)
	if err != nil {
		return 0, err
	}
	if c.cfg.Intents != nil {
		if err := c.cfg.Intents.PutIntents(ctx, intents); err != nil {
			// Nothing was done yet: the next pass finds the local intents
			// and does them again.
			return 0, err
		}
	}
	rep.Refused += len(refused)
	c.m.refused.WithLabelValues(RefuseRecheck).Add(float64(len(refused)))
	actStart, errs := time.Now(), rep.Errors
	done, passed, corrections := c.act(ctx, intents, rep, true)
	took := time.Since(actStart)
	rep.StorageDuration += took
	// The rate of a round that went to owners (one request for many
	// items), or had failures (fast, or cut short), says nothing of the
	// storage's.
	if rep.Errors == errs && ctx.Err() == nil && !slices.ContainsFunc(intents, c.owned) {
		c.measure(kind, len(done), took)
	}
	// One commit at a time, in round order: the last round's has landed
	// (beside this round's removals) before this round's takes off.
	if err := c.land(rep); err != nil {
		return 0, err
	}
	c.takeOff(ctx, done, passed, corrections)
	return len(done), nil
}

// measure keeps the removal rate of a round of the kind (0 unlink, 1
// purge) whose n storage operations done took d, for the next round's
// size. A round with fewer operations than can be in flight measures
// their latency, not the rate: it is left out.
func (c *Collector) measure(kind, n int, d time.Duration) {
	if n < c.cfg.Concurrency || d <= 0 {
		return
	}
	c.rate[kind] = float64(n) / d.Seconds()
	if c.cfg.RateLimit > 0 {
		c.rate[kind] = min(c.rate[kind], c.cfg.RateLimit)
	}
}

// act does the storage operation of each intent and returns the ones
// done, the ones passed over because they raced since the re-check (see
// remove), and the owners' statements about objects they still use (which
// commit publishes after the removals). A node whose operation failed
// keeps its intent for the next pass, and no later round of this pass
// chooses it again. lastLook is set for a round's own intents, whose
// operations have not run: recovery's may have, and a removal done and
// then raced must go through the commit, which restores it.
func (c *Collector) act(ctx context.Context, intents []refcount.Intent, rep *Report, lastLook bool) (done, passed []refcount.Intent, corrections []events.Event) {
	var mu sync.Mutex
	var owned []refcount.Intent
	if len(c.cfg.Owners) > 0 {
		owned = slices.DeleteFunc(slices.Clone(intents), func(in refcount.Intent) bool { return !c.owned(in) })
		intents = slices.DeleteFunc(slices.Clone(intents), c.owned)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.cfg.Concurrency)
	if len(owned) > 0 {
		g.Go(func() error {
			var d []refcount.Intent
			d, corrections = c.askOwners(gctx, owned, rep, &mu)
			mu.Lock()
			defer mu.Unlock()
			done = append(done, d...)
			// What the owners did not delete (in use, unanswered, or
			// failed) waits for the next pass, as a failed operation.
			deleted := make(map[string]bool, len(d))
			for _, in := range d {
				deleted[in.ID] = true
			}
			for _, in := range owned {
				if !deleted[in.ID] {
					c.failing[in.Node] = true
				}
			}
			return nil
		})
	}
	for _, in := range intents {
		g.Go(func() error {
			raced, err := c.remove(gctx, in, lastLook)
			if err != nil {
				c.m.errors.WithLabelValues(string(in.Node.Kind)).Inc()
				c.cfg.Logger.Warn("storage operation failed; the intent stays for the next pass",
					"node", in.Node.String(), "err", err)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				rep.Errors++
				c.failing[in.Node] = true
			case raced:
				rep.Refused++
				c.m.refused.WithLabelValues(RefuseLastLook).Inc()
				passed = append(passed, in)
			default:
				done = append(done, in)
			}
			return nil
		})
	}
	_ = g.Wait()
	return done, passed, corrections
}

// remove does an intent's storage operation, unless the projection shows
// that the removal raced since the re-check: a last look right before it,
// so that what the projection has applied since the re-check (a push that
// references the node again) stops the removal rather than has it undone
// after. It reports whether the removal raced.
func (c *Collector) remove(ctx context.Context, in refcount.Intent, lastLook bool) (raced bool, err error) {
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			return false, err
		}
	}
	if lastLook {
		if raced, err := c.cfg.Projection.Raced(in); err != nil || raced {
			return raced, err
		}
	}
	return false, c.storageOp(ctx, in)
}

func (c *Collector) storageOp(ctx context.Context, in refcount.Intent) error {
	n := in.Node
	switch n.Kind {
	case events.NodeManifest:
		return c.cfg.Storage.DeleteRevision(ctx, n.Repo, n.Digest, in.Tags)
	case events.NodeLayer:
		return c.cfg.Storage.DeleteLayerLink(ctx, n.Repo, n.Digest)
	case events.NodeBlob:
		return c.cfg.Storage.PurgeBlob(ctx, n.Digest)
	}
	// Labels and legacy images have no storage of their own in a
	// Distribution registry: removing them is bookkeeping only.
	return nil
}

// commit publishes a Collected event per intent done, waits for the
// projection to apply them, undoes the removals that raced, and drops the
// intents, with those of the removals passed over.
func (c *Collector) commit(ctx context.Context, done, passed []refcount.Intent, corrections []events.Event, rep *Report) (err error) {
	defer func() {
		if err == nil {
			err = c.publishCorrections(ctx, corrections)
		}
	}()
	// Nothing was done for the removals passed over: their intents go
	// first, whatever happens to the others. A drop that fails leaves
	// them to recovery, which judges them as any other: one whose node is
	// still referenced is undone (its link written again, harmlessly).
	if len(passed) > 0 {
		ids := intentIDs(passed)
		if err := c.dropIntents(ctx, ids, ids); err != nil {
			c.cfg.Logger.Error("dropping the intents of removals passed over failed; recovery will drop them", "err", err)
		}
	}
	if len(done) == 0 {
		return nil
	}
	evs := make([]events.Event, len(done))
	now := c.cfg.Now().UTC()
	for i, in := range done {
		evs[i] = events.Event{V: events.Version, ID: "gc-" + in.ID, Time: now, Source: c.cfg.Source,
			Kind: events.Collected, Collected: &events.CollectedRef{Node: in.Node, Purged: in.Purge, Intent: in.ID, AsOf: in.AsOf}}
	}
	if err := c.cfg.Log.Publish(ctx, evs); err != nil {
		return fmt.Errorf("collector: publish removals (intents stay for recovery): %w", err)
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return fmt.Errorf("collector: catch up after removals: %w", err)
	}
	// The apply decided: an intent it left is a removal it refused (the
	// node was named or held after the re-check); the others it committed
	// and dropped.
	left, err := c.cfg.Projection.IntentsLeft(intentIDs(done))
	if err != nil {
		return fmt.Errorf("collector: settle removals (intents stay for recovery): %w", err)
	}
	settled := make([]string, 0, len(done))
	var refused []string
	defer func() {
		// The intents of refused removals go here, in one transaction
		// (none in a round without a race), and every settled one from
		// the IntentStore.
		if err := c.dropIntents(ctx, refused, settled); err != nil {
			c.cfg.Logger.Error("dropping settled intents failed; recovery will drop them", "err", err)
		}
	}()
	var relinked []events.Event
	for _, in := range done {
		if left[in.ID] {
			restored, err := c.settle(ctx, in)
			if err != nil {
				rep.Errors++
				c.cfg.Logger.Error("settling a removal failed; the intent stays", "node", in.Node.String(), "err", err)
				continue
			}
			settled, refused = append(settled, in.ID), append(refused, in.ID)
			if restored {
				rep.Restored++
				relinked = append(relinked, c.healedEvent(in.Node, "undo-"+in.ID))
			}
			continue
		}
		settled = append(settled, in.ID)
		kind := string(in.Node.Kind)
		op := "unlink"
		if in.Purge {
			op = "purge"
			rep.Purged++
			rep.PurgedBytes += in.Size
			c.m.bytes.WithLabelValues(kind).Add(float64(in.Size))
		} else {
			rep.Unlinked++
			rep.UnlinkedBytes += in.Size
		}
		c.m.deletions.WithLabelValues(kind, op).Inc()
		c.noteRemoved(in.Node)
		rep.Removed = append(rep.Removed, Removal{Node: in.Node, Purge: in.Purge, Bytes: in.Size})
	}
	return c.publishHealed(ctx, relinked)
}

// intentIDs lists the intents' ids.
func intentIDs(ins []refcount.Intent) []string {
	ids := make([]string, len(ins))
	for i, in := range ins {
		ids[i] = in.ID
	}
	return ids
}

// healedEvent says that the collector wrote a node's link back.
func (c *Collector) healedEvent(n events.NodeRef, id string) events.Event {
	return events.Event{V: events.Version, ID: "heal-" + id, Time: c.cfg.Now().UTC(), Source: c.cfg.Source,
		Kind: events.Healed, Collected: &events.CollectedRef{Node: n}}
}

// publishHealed publishes Healed events and waits until they are applied.
func (c *Collector) publishHealed(ctx context.Context, evs []events.Event) error {
	return c.publishApplied(ctx, evs, "heals")
}

// publishApplied publishes events and waits until the projection applied them.
func (c *Collector) publishApplied(ctx context.Context, evs []events.Event, what string) error {
	if len(evs) == 0 {
		return nil
	}
	if err := c.cfg.Log.Publish(ctx, evs); err != nil {
		return fmt.Errorf("collector: publish %s: %w", what, err)
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return fmt.Errorf("collector: catch up after %s: %w", what, err)
	}
	return nil
}

// settle handles a removal whose Collected event the projection refused
// (the removal raced with a new reference): if the node is still present,
// its links are put back; if it has been deleted since, there is nothing
// to put back. The caller then drops the intent.
func (c *Collector) settle(ctx context.Context, in refcount.Intent) (restored bool, err error) {
	ni, ok, err := c.cfg.Projection.Lookup(in.Node)
	if err != nil || !ok || !ni.Present {
		return false, err // deleted since: nothing to put back
	}
	if err := c.undo(ctx, in); err != nil {
		return false, err
	}
	c.m.races.WithLabelValues(string(in.Node.Kind)).Inc()
	c.cfg.Logger.Warn("a removal raced with a new reference; restored", "node", in.Node.String())
	return true, nil
}

// undo puts back what an intent's storage operation removed.
func (c *Collector) undo(ctx context.Context, in refcount.Intent) error {
	if c.owned(in) {
		return nil // the owner deletes only what it does not use: nothing to put back
	}
	n := in.Node
	switch n.Kind {
	case events.NodeManifest:
		return c.cfg.Storage.LinkRevision(ctx, n.Repo, n.Digest)
	case events.NodeLayer:
		return c.cfg.Storage.LinkLayer(ctx, n.Repo, n.Digest)
	case events.NodeBlob:
		if _, err := c.cfg.Storage.StatBlob(ctx, n.Digest); err != nil {
			// The data went and something references it again: only a
			// re-upload can bring it back. The reconciler will record its
			// absence; say it loudly.
			c.cfg.Logger.Error("blob purged while being re-referenced", "digest", n.Digest.String())
			return nil
		}
	}
	return nil
}

// recover finishes the intents a crash left behind.
func (c *Collector) recover(ctx context.Context, rep *Report) error {
	intents, err := c.allIntents(ctx)
	if err != nil || len(intents) == 0 {
		return err
	}
	if c.cfg.Barrier != nil && slices.ContainsFunc(intents, func(in refcount.Intent) bool { return in.Purge }) {
		if err := c.cfg.Barrier(ctx); err != nil {
			c.m.barrierFailures.Inc()
			return fmt.Errorf("collector: purge intents wait: %w", err)
		}
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return err
	}
	var redo []refcount.Intent
	var drop []string
	var relinked []events.Event
	undo := func(in refcount.Intent) error {
		if err := c.undo(ctx, in); err != nil {
			return err
		}
		rep.Restored++
		drop = append(drop, in.ID)
		relinked = append(relinked, c.healedEvent(in.Node, "undo-"+in.ID))
		return nil
	}
	now := c.cfg.Now()
	v, err := c.View(now)
	if err != nil {
		return err
	}
	paused := map[string]bool{}
	for _, p := range v.Paused {
		paused[p.Repo] = true
	}
	for _, in := range intents {
		ni, ok, err := c.cfg.Projection.Get(in.Node)
		if err != nil {
			return err
		}
		bound := v.Bound
		if in.Purge {
			bound = v.PurgeBound
		}
		switch {
		case !ok || !ni.Present:
			drop = append(drop, in.ID) // committed before the crash
		case ni.Count == 0 && ni.Eligible != nil && !ni.Eligible.After(bound) && ni.LastSeq <= in.AsOf &&
			!v.Whole && !paused[in.Node.Repo] && !(in.Purge && len(v.Paused) > 0):
			redo = append(redo, in)
		default:
			// Re-referenced since the intent, or not to be judged now:
			// undo whatever was done; the node is a candidate again later.
			if err := undo(in); err != nil {
				return err
			}
		}
	}
	// What is redone passes the storage check first, as in a round.
	cands := make([]refcount.Candidate, 0, len(redo))
	for _, in := range redo {
		cands = append(cands, refcount.Candidate{Node: in.Node, Origin: in.Origin})
	}
	refusals, err := c.confirm(ctx, cands)
	if err != nil {
		return err
	}
	if err := c.refuse(ctx, refusals, rep); err != nil {
		return err
	}
	refused := map[events.NodeRef]bool{}
	for _, r := range refusals {
		refused[r.node] = true
	}
	kept := redo[:0]
	for _, in := range redo {
		if !refused[in.Node] {
			kept = append(kept, in)
		} else if err := undo(in); err != nil {
			return err
		}
	}
	if err := c.publishHealed(ctx, relinked); err != nil {
		return err
	}
	if err := c.dropIntents(ctx, drop, drop); err != nil {
		return err
	}
	c.cfg.Logger.Info("finishing intents left by an earlier run", "redo", len(kept), "total", len(intents))
	done, passed, corrections := c.act(ctx, kept, rep, false)
	return c.commit(ctx, done, passed, corrections, rep)
}

// Run makes a pass at once and then every interval until ctx ends. A
// failed pass is logged and retried at the next tick.
func (c *Collector) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rep, err := c.Pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrPaused) {
			c.cfg.Logger.Info("collection paused", "err", err)
		} else if err != nil {
			c.cfg.Logger.Error("collector pass failed", "err", err)
		} else if rep.Unlinked+rep.Purged+rep.Errors+rep.Restored > 0 {
			c.cfg.Logger.Info("collector pass", "unlinked", rep.Unlinked, "purged", rep.Purged,
				"unlinkedBytes", rep.UnlinkedBytes, "purgedBytes", rep.PurgedBytes, "refused", rep.Refused, "restored", rep.Restored, "errors", rep.Errors,
				"duration", rep.Duration)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
