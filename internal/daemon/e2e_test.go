package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	dto "github.com/prometheus/client_model/go"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/internal/s3test"
	"github.com/refgc/refgc/refcount"
)

const (
	testToken     = "e2e-token"
	testGrace     = time.Hour
	testRetention = 3 * time.Hour
	registryYML   = "../../deploy/registry.yml"
)

// env is the daemon with the embedded NATS and a collector on a clock the
// test moves, and a registry started from the deployment's registry.yml
// whose notifications go to the daemon's webhook.
type env struct {
	t      *testing.T
	d      *daemon.Daemon
	reg    *regtest.Registry
	clock  regtest.Clock
	keep   bool
	marker v1.Image
	marks  int
	kept   map[string]bool
}

type envOpts struct {
	policy          refcount.Policy
	grace           time.Duration
	noStorage       bool
	noRegistry      bool
	collectInterval time.Duration
	adminToken      string
	// s3 stores in an in-process S3 server (registry and refgc alike).
	s3          bool
	native      []distribution.NativeSource
	expireTags  bool
	timeMachine time.Duration
	// pullHeartbeat is the webhook's (0: its default).
	pullHeartbeat time.Duration
	// owners route sources to owners; ownersOnly runs without storage
	// and without a webhook (implies noStorage and noRegistry).
	owners     []daemon.OwnerConfig
	ownersOnly bool
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.policy == "" {
		o.policy = refcount.PolicyDelete
	}
	if o.grace == 0 {
		o.grace = testGrace
	}
	e := &env{t: t, keep: o.policy == refcount.PolicyKeep}
	root := t.TempDir()
	cfg := daemon.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.Addr = "127.0.0.1:0"
	cfg.NATS.Listen = "127.0.0.1:-1"
	cfg.Webhook.Token = testToken
	cfg.AdminToken = o.adminToken
	var s3 map[string]any
	if o.s3 {
		s3 = s3test.Start(t, s3test.Options{Mirror: root}).Params("")
	}
	cfg.Native.Sources = o.native
	cfg.Collector.ExpireTags, cfg.Collector.TimeMachine = o.expireTags, o.timeMachine
	cfg.Webhook.PullHeartbeat = o.pullHeartbeat
	cfg.Owners, cfg.Collector.OwnersOnly = o.owners, o.ownersOnly
	if o.ownersOnly {
		o.noStorage, o.noRegistry, cfg.Webhook.Token = true, true, ""
	}
	if !o.noStorage {
		cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
		if o.s3 {
			cfg.Storage = map[string]any{"s3": s3}
		}
	}
	cfg.Collector.Interval = o.collectInterval
	cfg.Collector.Grace, cfg.Collector.Retention = o.grace, testRetention
	cfg.Collector.Untagged = string(o.policy)
	cfg.Collector.Concurrency = 4
	cfg.Now = e.now
	cfg.NoSync = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	t.Cleanup(func() {
		if err := d.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	if o.noRegistry {
		return e
	}
	e.reg = regtest.StartFromConfigFile(t, registryYML, regtest.Options{Root: root, NotifyURL: d.WebhookURL(), NotifyToken: testToken, S3: s3})
	// The registry's clock is the test's (see collector's env).
	e.reg.Faults.ShiftTime(e.clock.Offset)
	e.marker = regtest.RandomImage(t, 1)
	e.settle()
	return e
}

func (e *env) now() time.Time          { return e.clock.Now() }
func (e *env) advance(d time.Duration) { e.clock.Advance(d) }

// settle waits until every notification sent so far is in the projection:
// the registry delivers in order, so a fresh marker tag arriving means
// everything before it did.
func (e *env) settle() {
	e.t.Helper()
	e.marks++
	tag := fmt.Sprintf("m%d", e.marks)
	e.reg.Push(e.t, "marker:"+tag, e.marker)
	ref := events.NodeRef{Kind: events.NodeTag, Repo: "marker", Name: tag}
	regtest.WaitFor(e.t, "marker "+tag, func() bool {
		_, ok, err := e.d.Projection().Get(ref)
		return err == nil && ok
	})
	if n := metricSum(e.t, e.d, "refgc_webhook_events_dead_lettered_total"); n != 0 {
		e.t.Fatalf("%v events dead-lettered", n)
	}
}

func (e *env) pass() collector.Report {
	e.t.Helper()
	rep, err := e.d.Collect(context.Background(), false)
	if err != nil {
		e.t.Fatal(err)
	}
	if rep.Errors > 0 {
		e.t.Fatalf("pass had %d errors", rep.Errors)
	}
	return rep
}

// drain moves the clock past grace and retention, pass after pass, so that
// every cascade completes.
func (e *env) drain() collector.Report {
	e.t.Helper()
	var total collector.Report
	regtest.Drain(e.t, testGrace, testRetention, e.advance, func() {
		rep := e.pass()
		total.Unlinked += rep.Unlinked
		total.Purged += rep.Purged
	})
	return total
}

// collectAndVerify compares the filesystem oracle's reachable set before
// the drain with what is present after it: nothing reachable lost, no
// garbage left (except what e.kept names).
func (e *env) collectAndVerify() collector.Report {
	e.t.Helper()
	var rep collector.Report
	regtest.CollectAndVerify(e.t, e.reg.Root, e.keep, e.kept, e.settle, func() { rep = e.drain() }, e.d.Projection().Check)
	return rep
}

func (e *env) mustPull(ref string) { e.t.Helper(); e.reg.MustPull(e.t, ref) }

func (e *env) mustNotFind(repo, ref string) { e.t.Helper(); e.reg.MustNotFind(e.t, repo, ref) }

func metricSum(t *testing.T, d *daemon.Daemon, name string) float64 {
	t.Helper()
	return metricWith(t, d, name, "", "")
}

// metricWith sums the series of a metric whose label has value (every
// series when label is "").
func metricWith(t *testing.T, d *daemon.Daemon, name, label, val string) float64 {
	t.Helper()
	mfs, err := d.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == label && l.GetValue() == val
			}) {
				sum += value(m)
			}
		}
	}
	return sum
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// TestEndToEnd runs with the storage on the filesystem, and on the s3
// driver against an in-process S3 server.
func TestEndToEnd(t *testing.T) {
	t.Run("filesystem", func(t *testing.T) { testEndToEnd(t, envOpts{}) })
	t.Run("s3", func(t *testing.T) { testEndToEnd(t, envOpts{s3: true}) })
}

func testEndToEnd(t *testing.T, o envOpts) {
	e := newEnv(t, o)
	// Images sharing layers, across repositories, with an index and a referrer.
	base := regtest.RandomImage(t, 2)
	e.reg.Push(t, "app:v1", base)
	shared := regtest.SharingImage(t, base, 2, 1)
	e.reg.Push(t, "app:v2", shared)
	e.reg.Mount(t, "app:v1", "mirror:v1")
	a, b := regtest.RandomImage(t, 1), regtest.RandomImage(t, 2)
	idx := e.reg.PushIndex(t, "app", "multi", a, b)
	sig := e.reg.PushReferrer(t, "app", regtest.Describe(t, shared), "application/vnd.example.sig")
	byDigest := e.reg.PushByDigest(t, "app", regtest.RandomImage(t, 1))
	e.reg.PushRandom(t, "app:moving", 1)
	e.reg.PushRandom(t, "tmp:v1", 2)

	e.settle()
	sigRef := events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: digest.Digest(sig.Digest.String())}
	if ni, _, _ := e.d.Projection().Get(sigRef); ni.Count != 1 {
		t.Fatalf("referrer held %d times, want 1 (by its subject)", ni.Count)
	}

	// Move and delete tags, delete manifests by digest and an index.
	e.reg.PushRandom(t, "app:moving", 1)
	e.reg.DeleteTag(t, "app", "v1")
	e.reg.DeleteManifest(t, "app", byDigest)
	e.reg.DeleteTag(t, "tmp", "v1")
	e.reg.DeleteTag(t, "app", "multi")
	e.reg.DeleteManifest(t, "app", regtest.Digest(t, idx))

	rep := e.collectAndVerify()
	if rep.Unlinked == 0 || rep.Purged == 0 {
		t.Errorf("nothing collected: %+v", rep)
	}
	for _, ref := range []string{"app:v2", "app:moving", "mirror:v1", "app@" + sig.Digest.String()} {
		e.mustPull(ref)
	}
	for _, ref := range []string{regtest.Digest(t, base).String(), byDigest.String(), regtest.Digest(t, a).String(), regtest.Digest(t, idx).String()} {
		e.mustNotFind("app", ref)
	}

	// The HTTP surface.
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, daemon.DumpPath: 200,
		daemon.NodesPath: 200, daemon.NodesPath + "?kind=tag&repo=app&name=v2": 200, daemon.NodesPath + "?kind=tag&repo=app&name=v1": 404} {
		resp, err := http.Get(e.d.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" {
			for _, m := range []string{"refgc_webhook_events_received_total", "refgc_events_published_total",
				"refgc_follower_records_applied_total", "refgc_follower_lag_events", "refgc_candidates", "go_goroutines", "process_cpu_seconds_total"} {
				if !bytes.Contains(body, []byte(m)) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
		}
	}
}

func TestAdminCollectAndRestore(t *testing.T) {
	e := newEnv(t, envOpts{})
	img := e.reg.PushRandom(t, "app:v1", 2)
	d := regtest.Digest(t, img)
	e.reg.DeleteTag(t, "app", "v1")
	e.settle()
	e.advance(2 * testGrace)

	post := func(path string, out any) {
		t.Helper()
		resp, err := http.Post(e.d.URL()+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	var plan collector.Report
	post(daemon.CollectPath+"?dry_run=true", &plan)
	if plan.Unlinked != 1 {
		t.Fatalf("dry run: %+v", plan)
	}
	e.mustPull("app@" + d.String())
	e.settle()               // the pull's notification is in, with its time
	e.advance(2 * testGrace) // and its lease ends
	var rep collector.Report
	post(daemon.CollectPath, &rep)
	if rep.Unlinked == 0 {
		t.Fatalf("collect: %+v", rep)
	}
	e.mustNotFind("app", d.String())
	var res collector.Restored
	post(daemon.RestorePath+"?repo=app&digest="+d.String(), &res)
	if !slices.Equal(res.Tags, []string{"v1"}) {
		t.Fatalf("restored %+v", res)
	}
	e.mustPull("app:v1")
}

// The two cases in which `registry garbage-collect` breaks images.
func TestStockCollectorBreakages(t *testing.T) {
	t.Run("untagged-only repository keeps its layer links under keep", func(t *testing.T) {
		// garbage-collect --delete-untagged finds no tags directory in a
		// repository that was only ever pushed by digest, skips its
		// manifests without marking them, and sweeps their layer links and
		// blobs: the registry still serves the manifest, but no pull works.
		// refgc under --untagged keep keeps such images whole.
		e := newEnv(t, envOpts{policy: refcount.PolicyKeep})
		d := e.reg.PushByDigest(t, "untagged", regtest.RandomImage(t, 2))
		e.reg.PushRandom(t, "other:v1", 1)
		e.reg.DeleteTag(t, "other", "v1")
		e.settle()
		stock := stockGC(t, e.reg.Root, true)
		left, err := regtest.Present(stock.Root)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := left.Revisions["untagged@"+d.String()]; !ok {
			t.Error("stock: the revision link is gone, so nothing is broken")
		}
		if _, ok := left.Blobs[d.String()]; ok {
			t.Error("stock: the manifest's data survived")
		}
		if err := stock.TryPull(t, "untagged@"+d.String()); err == nil {
			t.Error("the stock collector kept this image whole: the comparison no longer holds")
		} else {
			t.Logf("after registry garbage-collect --delete-untagged: %v", err)
		}
		e.collectAndVerify()
		e.mustPull("untagged@" + d.String())
	})
	t.Run("a child deleted while listed in a live index keeps its layers", func(t *testing.T) {
		// garbage-collect stops marking at the missing revision and deletes
		// the child's blobs while the index still lists it: restoring the
		// child is then impossible. refgc keeps them while the index lives.
		e := newEnv(t, envOpts{})
		a, b := regtest.RandomImage(t, 2), regtest.RandomImage(t, 1)
		e.reg.PushIndex(t, "app", "multi", a, b)
		e.reg.DeleteManifest(t, "app", regtest.Digest(t, a))
		e.kept = map[string]bool{"blob " + regtest.Digest(t, a).String(): true}
		for _, l := range regtest.BlobDigests(t, a) {
			e.kept["layer app@"+l.String()] = true
			e.kept["blob "+l.String()] = true
		}
		e.settle()
		stock := stockGC(t, e.reg.Root, false)
		lost := 0
		for _, l := range regtest.BlobDigests(t, a) {
			if stock.BlobStatus(t, "app", l) != 200 {
				lost++
			}
		}
		if lost == 0 {
			t.Error("the stock collector kept the child's blobs: the comparison no longer holds")
		}
		e.collectAndVerify()
		for _, l := range regtest.BlobDigests(t, a) {
			if code := e.reg.BlobStatus(t, "app", l); code != 200 {
				t.Errorf("layer %s of the deleted child answers %d", l, code)
			}
		}
		if code := e.reg.ManifestStatus(t, "app", "multi"); code != 200 {
			t.Errorf("index answers %d", code)
		}
		e.mustPull("app@" + regtest.Digest(t, b).String())
	})
}

// Pushes and pulls while the daemon's own collector loop runs passes
// continuously on a short real-time grace.
func TestPushPullWhileCollecting(t *testing.T) {
	e := newEnv(t, envOpts{grace: 10 * time.Second, collectInterval: 10 * time.Millisecond})
	base := regtest.RandomImage(t, 2)
	e.reg.Push(t, "app:base", base)
	for i := range 30 {
		tag := fmt.Sprintf("app:t%d", i%5) // tags move: the old images become garbage
		img := regtest.SharingImage(t, base, 1, 1)
		if err := pushErr(e, tag, img); err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		if err := e.reg.TryPull(t, tag); err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
		if i%7 == 0 {
			e.reg.DeleteTag(t, "app", fmt.Sprintf("t%d", i%5))
		}
	}
	for _, tag := range []string{"app:base", "app:t4"} {
		e.mustPull(tag)
	}
	if n := metricSum(t, e.d, "refgc_collector_pass_duration_seconds"); n < 2 {
		t.Errorf("%v passes ran during the pushes", n)
	}
	if n := metricSum(t, e.d, "refgc_collector_storage_errors_total"); n != 0 {
		t.Errorf("%v storage errors", n)
	}
	t.Logf("deleted while pushing: %v", metricSum(t, e.d, "refgc_collector_deletions_total"))
	e.collectAndVerify()
	for _, tag := range []string{"app:base", "app:t1", "app:t4"} {
		e.mustPull(tag)
	}
}

func pushErr(e *env, ref string, img v1.Image) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	e.reg.Push(e.t, ref, img)
	return nil
}

// Replays the captured notifications of a stock registry through the
// daemon's HTTP webhook, twice (a redelivery changes nothing).
func TestFixtureReplay(t *testing.T) {
	e := newEnv(t, envOpts{noStorage: true, noRegistry: true})
	files, err := filepath.Glob("../../events/testdata/distribution-v3.1.2/events/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("fixtures: %v %v", files, err)
	}
	slices.Sort(files)
	var last uint64
	for round := range 2 {
		for _, f := range files {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			postEvents(t, e.d.WebhookURL(), body)
		}
		seq, err := e.d.Follower().CatchUp(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if round == 1 && seq != last {
			t.Errorf("redelivery grew the log from %d to %d", last, seq)
		}
		last = seq
	}
	mk := func(repo, d string) events.NodeRef {
		return events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: digest.Digest("sha256:" + d)}
	}
	const (
		m1 = "c1d30b3156e28b8f1773439d8e9be1b26ba18c441a307ca65f6a24224974d854"
		m2 = "ca8180460c8ab0c1da32f55a18af90b7b9dde719b29b828e3e3c5fd4292171bc"
		ix = "d486904221dd7c24d3a8efb1490535cb0a287328b6ecb1977637488036e373d0"
		l1 = "90a0fb77ceecf1d9b55ba1685c51cd320b12383aac98d2aff7882949ac06165e"
	)
	for _, w := range []struct {
		ref     events.NodeRef
		count   int
		present bool
	}{
		{events.NodeRef{Kind: events.NodeTag, Repo: "demo", Name: "v1"}, 0, true},
		{events.NodeRef{Kind: events.NodeTag, Repo: "demo", Name: "v1again"}, -1, false},
		{mk("demo", m1), 2, true}, // v1 and the index
		{mk("demo", m2), 2, true},
		{mk("demo", ix), 1, true},
		{mk("other", m1), -1, false},
		{events.NodeRef{Kind: events.NodeLayer, Repo: "bydigest", Digest: "sha256:" + l1}, 1, false},
		{events.NodeRef{Kind: events.NodeBlob, Digest: "sha256:" + l1}, 3, true},
	} {
		ni, ok, err := e.d.Projection().Get(w.ref)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case w.count < 0 && ok:
			t.Errorf("%s: exists: %+v", w.ref, ni)
		case w.count >= 0 && (!ok || int(ni.Count) != w.count || ni.Present != w.present):
			t.Errorf("%s: %+v (found %v), want count %d present %v", w.ref, ni, ok, w.count, w.present)
		}
	}
	// Unauthenticated posts are refused.
	resp, err := http.Post(e.d.WebhookURL(), distribution.DistributionEventsMediaType, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no token: %d", resp.StatusCode)
	}
	// Without storage, collection is refused.
	resp, err = http.Post(e.d.URL()+daemon.CollectPath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("collect without storage: %d", resp.StatusCode)
	}
}

func postEvents(t testing.TB, url string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", distribution.DistributionEventsMediaType)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook: %d %s", resp.StatusCode, b)
	}
}

// stockGC runs Distribution's own mark and sweep (`registry
// garbage-collect`, with --delete-untagged if removeUntagged) on a copy of
// root, and serves the result from a second registry.
func stockGC(t *testing.T, root string, removeUntagged bool) *regtest.Registry {
	t.Helper()
	ctx := context.Background()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(root)); err != nil {
		t.Fatal(err)
	}
	drv, err := factory.Create(ctx, "filesystem", map[string]any{"rootdirectory": dst})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	if err := storage.MarkAndSweep(ctx, drv, ns, storage.GCOpts{RemoveUntagged: removeUntagged, Quiet: true}); err != nil {
		t.Fatal(err)
	}
	return regtest.Start(t, regtest.Options{Root: dst})
}
