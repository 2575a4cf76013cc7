package collector_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/internal/s3test"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

const (
	testGrace     = time.Hour
	testRetention = 3 * time.Hour
	testToken     = "test-token"
)

// env is a real registry whose notifications go through the real webhook
// into a projection, a store over the same files, and a collector on a
// clock that the test moves forward.
type env struct {
	t      *testing.T
	reg    *regtest.Registry
	proj   *refcount.Projection
	store  *store.Driver
	log    *sinkLog
	clock  regtest.Clock
	col    *collector.Collector
	rec    *reconcile.Reconciler
	keep   bool
	s3     *s3test.Server // the S3 server, with envOptions.s3
	deadOK bool           // dead letters are expected
	// kept are objects that refgc keeps on purpose beyond what the oracle
	// marks (a child deleted while its index lives keeps its data).
	kept map[string]bool
}

// sinkLog is the webhook's sink and the collector's log at once: events go
// straight into the projection through a DirectLog.
type sinkLog struct {
	collector.DirectLog
	mu      sync.Mutex
	cond    *sync.Cond
	touches map[string]int
	dead    []eventlog.DeadLetter
}

func (s *sinkLog) PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	if err := s.Publish(ctx, evs); err != nil {
		return nil, err
	}
	s.mu.Lock()
	for _, e := range evs {
		if e.Kind == events.Touched {
			s.touches[e.Ref.Repo]++
		}
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	return make([]eventlog.PubResult, len(evs)), nil
}

func (s *sinkLog) DeadLetter(_ context.Context, d eventlog.DeadLetter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dead = append(s.dead, d)
	return nil
}

func newEnv(t *testing.T, policy refcount.Policy) *env {
	t.Helper()
	return newEnvWith(t, policy, envOptions{})
}

// envOptions change newEnv's parts.
type envOptions struct {
	// wrap wraps the webhook's sink.
	wrap func(*sinkLog) distribution.Sink
	// configure changes the registry's configuration.
	configure func(*configuration.Configuration)
	// maxBody is the webhook's body limit (0: its default).
	maxBody int64
	// s3 puts the registry's storage in an in-process S3 server (the s3
	// driver), mirrored as files under the registry's Root for the oracle.
	s3 bool
	// storeOpts are the store's options.
	storeOpts []store.Option
	// dirs has the collector remove empty directories (as the daemon
	// wires it on the filesystem driver).
	dirs bool
	// reg registers the collector's metrics.
	reg prometheus.Registerer
}

// newEnvWith is newEnv with its parts changed by o.
func newEnvWith(t *testing.T, policy refcount.Policy, o envOptions) *env {
	t.Helper()
	proj, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"),
		refcount.Options{Untagged: policy, Grace: testGrace, Retention: testRetention, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proj.Close() })
	e := &env{t: t, proj: proj, keep: policy == refcount.PolicyKeep}
	e.log = &sinkLog{DirectLog: collector.DirectLog{P: proj}, touches: map[string]int{}}
	e.log.cond = sync.NewCond(&e.log.mu)

	root := t.TempDir()
	driver, params := "filesystem", map[string]any{"rootdirectory": root}
	if o.s3 {
		e.s3 = s3test.Start(t, s3test.Options{Mirror: root})
		driver, params = "s3", e.s3.Params("")
	}
	e.store, err = store.New(context.Background(), driver, params, o.storeOpts...)
	if err != nil {
		t.Fatal(err)
	}
	var sink distribution.Sink = e.log
	if o.wrap != nil {
		sink = o.wrap(e.log)
	}
	hook := httptest.NewServer(regtest.Must(distribution.NewWebhook(distribution.WebhookConfig{Sink: sink, Token: testToken, Now: e.now,
		MaxBodyBytes: o.maxBody, Pulls: markerPulls{proj},
		Translate: distribution.TranslateOptions{Reader: collector.StoreManifestReader{Store: e.store}}})))
	t.Cleanup(hook.Close)
	opts := regtest.Options{Root: root, NotifyURL: hook.URL, NotifyToken: testToken, Configure: o.configure}
	if o.s3 {
		opts.S3 = params
	}
	e.reg = regtest.Start(t, opts)
	// The registry's clock is the test's: its notifications' timestamps
	// move with the clock the test advances. (Storage modification times
	// stay on the wall clock, behind it: the storage check's comparison of
	// them is tested where the test writes storage itself.)
	e.reg.Faults.ShiftTime(e.clock.Offset)
	e.rec, err = reconcile.New(reconcile.Config{Projection: proj, Store: e.store, Log: e.log, Now: e.now})
	if err != nil {
		t.Fatal(err)
	}
	var dirs collector.EmptyDirs
	if o.dirs {
		dirs = e.store.EmptyDirs()
	}
	e.col, err = collector.New(collector.Config{Projection: proj, Storage: e.store, Log: e.log,
		Now: e.now, Concurrency: 4, Reconcile: e.reconcile, Dirs: dirs, Registerer: o.reg})
	if err != nil {
		t.Fatal(err)
	}
	// A marker image whose pulls tell when every earlier notification arrived.
	e.reg.PushRandom(t, "marker:m", 1)
	e.settle()
	return e
}

// markerPulls is the daemon's pull filter (the projection), except that
// every pull of the marker is published: settle counts them.
type markerPulls struct{ *refcount.Projection }

func (m markerPulls) Fresh(repo string, d digest.Digest, at time.Time) (bool, error) {
	if repo == "marker" {
		return false, nil
	}
	return m.Projection.Fresh(repo, d, at)
}

// reconcile is the collector's hook, as the daemon wires it.
func (e *env) reconcile(ctx context.Context, repos []string) error {
	_, err := e.rec.ReconcileRepos(ctx, repos)
	return err
}

func (e *env) now() time.Time { return e.clock.Now() }

// advance moves the collector's clock forward.
func (e *env) advance(d time.Duration) { e.clock.Advance(d) }

// settle waits until the registry has delivered every notification so far:
// the registry sends them in order, so the pull of the marker comes last.
func (e *env) settle() {
	e.t.Helper()
	e.log.mu.Lock()
	want := e.log.touches["marker"] + 1
	e.log.mu.Unlock()
	if code := e.reg.ManifestStatus(e.t, "marker", "m"); code != http.StatusOK {
		e.t.Fatalf("marker pull: %d", code)
	}
	deadline := time.AfterFunc(30*time.Second, func() {
		e.log.mu.Lock()
		e.log.cond.Broadcast()
		e.log.mu.Unlock()
	})
	defer deadline.Stop()
	start := time.Now()
	e.log.mu.Lock()
	defer e.log.mu.Unlock()
	for e.log.touches["marker"] < want {
		if time.Since(start) > 30*time.Second {
			e.t.Fatal("notifications did not arrive within 30 s")
		}
		e.log.cond.Wait()
	}
	if len(e.log.dead) > 0 && !e.deadOK {
		e.t.Fatalf("%d dead letters, the first: %s %s", len(e.log.dead), e.log.dead[0].Reason, e.log.dead[0].Detail)
	}
}

// drain runs passes while moving the clock past grace and retention, so
// that every cascade completes.
func (e *env) drain() collector.Report {
	e.t.Helper()
	var total collector.Report
	regtest.Drain(e.t, testGrace, testRetention, e.advance, func() {
		rep, err := e.col.Pass(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		if rep.Errors > 0 {
			e.t.Fatalf("pass had %d errors", rep.Errors)
		}
		total.Unlinked += rep.Unlinked
		total.Purged += rep.Purged
		total.UnlinkedBytes += rep.UnlinkedBytes
		total.PurgedBytes += rep.PurgedBytes
	})
	return total
}

// collectAndVerify computes the reachable set with the independent oracle,
// drains, and checks that exactly the reachable objects remain.
func (e *env) collectAndVerify() collector.Report {
	e.t.Helper()
	var rep collector.Report
	regtest.CollectAndVerify(e.t, e.reg.Root, e.keep, e.kept, e.settle, func() { rep = e.drain() }, e.proj.Check)
	return rep
}

func (e *env) mustPull(ref string) { e.t.Helper(); e.reg.MustPull(e.t, ref) }

func (e *env) mustNotFind(repo, ref string) { e.t.Helper(); e.reg.MustNotFind(e.t, repo, ref) }

func sorted(s []string) []string { slices.Sort(s); return s }

func manifestRef(repo string, d v1.Hash) events.NodeRef {
	return events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: digest.Digest(d.String())}
}

// newCollector returns a collector of the env's projection, log, clock and
// reconcile with cfg's other settings (its Storage, when not set, the
// env's store).
func (e *env) newCollector(cfg collector.Config) *collector.Collector {
	e.t.Helper()
	cfg.Projection, cfg.Log, cfg.Now, cfg.Reconcile = e.proj, e.log, e.now, e.reconcile
	if cfg.Storage == nil {
		cfg.Storage = e.store
	}
	col, err := collector.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return col
}
