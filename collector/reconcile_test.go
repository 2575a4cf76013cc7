package collector_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// droppingSink loses a share of the registry's events on their way to
// the log, as a registry restart does. The marker's events always pass, so
// that settle still knows when the registry has delivered everything.
type droppingSink struct {
	*sinkLog
	rng     *rand.Rand
	rate    float64
	on      atomic.Bool
	mu      sync.Mutex
	dropped []events.Event
}

func (d *droppingSink) PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	kept := evs
	if d.on.Load() {
		kept = nil
		d.mu.Lock()
		for _, e := range evs {
			if e.Repository() != "marker" && d.rng.Float64() < d.rate {
				d.dropped = append(d.dropped, e)
				continue
			}
			kept = append(kept, e)
		}
		d.mu.Unlock()
	}
	if _, err := d.sinkLog.PublishBatch(ctx, kept); err != nil {
		return nil, err
	}
	return make([]eventlog.PubResult, len(evs)), nil
}

// newDroppingEnv is newEnv with a sink that drops events while on.
func newDroppingEnv(t *testing.T, policy refcount.Policy, rate float64, seed uint64) (*env, *droppingSink) {
	t.Helper()
	var sink *droppingSink
	e := newEnvWith(t, policy, envOptions{wrap: func(l *sinkLog) distribution.Sink {
		sink = &droppingSink{sinkLog: l, rng: rand.New(rand.NewPCG(seed, seed)), rate: rate}
		return sink
	}})
	return e, sink
}

func (e *env) reconciler(reg prometheus.Registerer) *reconcile.Reconciler {
	e.t.Helper()
	r, err := reconcile.New(reconcile.Config{Projection: e.proj, Store: e.store,
		Log: e.log, Concurrency: 4, Now: e.now, Registerer: reg, Logger: quietLogger})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) mustVerifyClean(r *reconcile.Reconciler) {
	e.t.Helper()
	d, err := r.Verify(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	if !d.Clean() {
		e.t.Errorf("verify is not clean: %s", d)
	}
}

// workload pushes, moves, deletes: a small registry's day. It returns the
// tags that must stay pullable.
func workload(e *env, rng *rand.Rand) []string {
	var live []string
	bases := []v1.Image{regtest.RandomImage(e.t, 2), regtest.RandomImage(e.t, 3)}
	for i := range 6 {
		repo := fmt.Sprintf("team%d/app", i%3)
		tag := fmt.Sprintf("%s:v%d", repo, i)
		img := regtest.SharingImage(e.t, bases[i%2], 1+rng.IntN(2), 1)
		e.reg.Push(e.t, tag, img)
		switch i % 3 {
		case 0: // moved
			e.reg.PushRandom(e.t, tag, 1)
			live = append(live, tag)
		case 1: // deleted by tag
			e.reg.DeleteTag(e.t, repo, fmt.Sprintf("v%d", i))
		default:
			live = append(live, tag)
		}
	}
	old := e.reg.PushRandom(e.t, "gone:v1", 2)
	e.reg.DeleteManifest(e.t, "gone", regtest.Digest(e.t, old))
	e.reg.PushByDigest(e.t, "untagged", regtest.RandomImage(e.t, 1))
	idx := e.reg.PushIndex(e.t, "multi", "all", regtest.RandomImage(e.t, 1), regtest.RandomImage(e.t, 1))
	_ = idx
	live = append(live, "multi:all")
	img := e.reg.PushRandom(e.t, "signed:v1", 1)
	e.reg.PushReferrer(e.t, "signed", regtest.Describe(e.t, img), "application/vnd.example.sig")
	live = append(live, "signed:v1")
	return live
}

func TestReconcileRepairsLostEvents(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			e, sink := newDroppingEnv(t, refcount.PolicyDelete, 0.1, seed)
			sink.on.Store(true)
			live := workload(e, rand.New(rand.NewPCG(seed, 7)))
			e.settle()
			sink.on.Store(false)
			if len(sink.dropped) == 0 {
				t.Fatal("no event was dropped: the test proves nothing")
			}
			t.Logf("dropped %d events", len(sink.dropped))

			reg := prometheus.NewRegistry()
			r := e.reconciler(reg)
			before, err := r.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if before.Clean() {
				t.Fatalf("verify found no drift after %d lost events", len(sink.dropped))
			}
			// Past every lease, so that observations of absence take effect.
			e.advance(2 * testGrace)
			d, err := r.Reconcile(context.Background(), true)
			if err != nil {
				t.Fatal(err)
			}
			if d.Published == 0 {
				t.Fatalf("nothing published: %s", d)
			}
			e.mustVerifyClean(r)
			e.collectAndVerify()
			for _, ref := range live {
				e.mustPull(ref)
			}
			e.mustVerifyClean(r)
			if n, err := testutilCount(reg, "refgc_reconcile_passes_total"); err != nil || n < 3 {
				t.Errorf("passes metric %v, %v", n, err)
			}
		})
	}
}

// testutilCount reads a counter's value from a registry: the sum over its
// series, or over those with the given label and value.
func testutilCount(reg *prometheus.Registry, name string, labelValue ...string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				if len(labelValue) == 2 && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labelValue[0] && l.GetValue() == labelValue[1]
				}) {
					continue
				}
				sum += m.GetCounter().GetValue()
			}
			return sum, nil
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

func TestReconcileDuringPushes(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	e.reg.PushRandom(t, "app:v0", 2)
	e.settle()
	// Past the leases of what is there already: only the guard by
	// sequence protects what is pushed during the walk.
	e.advance(2 * testGrace)
	r := e.reconciler(nil)

	const n = 12
	type push struct {
		tag string
		ref name.Reference
		img v1.Image
	}
	pushes := make([]push, n)
	base := regtest.RandomImage(t, 2)
	for i := range pushes {
		tag := fmt.Sprintf("app%d:v%d", i%3, i)
		pushes[i] = push{tag, e.reg.Ref(t, tag), regtest.SharingImage(t, base, 1, 1)}
	}
	done := make(chan error, 1)
	go func() {
		for _, p := range pushes {
			if err := remote.Write(p.ref, p.img); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	passes := 0
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		if _, err := r.Reconcile(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		passes++
	}
	t.Logf("%d reconcile passes ran during the pushes", passes)
	e.settle()
	e.mustVerifyClean(r)
	e.collectAndVerify()
	for i := range pushes {
		e.mustPull(pushes[i].tag)
	}
	e.mustPull("app:v0")
}

func TestReconcileMendsCorruptProjection(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	v1img := e.reg.PushRandom(t, "app:v1", 2)
	e.reg.PushRandom(t, "app:v2", 1)
	b := e.reg.PushRandom(t, "b:v1", 2)
	e.settle()
	e.advance(2 * testGrace)

	// Corrupt the projection on purpose, straight through the log.
	cur, err := e.proj.Cursor()
	if err != nil {
		t.Fatal(err)
	}
	layer := digest.Digest(regtest.BlobDigests(t, b)[0].String())
	ghost := digest.Digest(regtest.Digest(t, v1img).String())
	now := e.now()
	bogus := []events.Event{
		{ID: "bogus-1", Time: now, Kind: events.TagDeleted, Tag: &events.Tag{Repo: "app", Name: "v1"}},
		{ID: "bogus-2", Time: now, Kind: events.ObservedAbsent, Absent: &events.Observation{
			Node: events.NodeRef{Kind: events.NodeLayer, Repo: "b", Digest: layer}, AsOf: cur}},
		{ID: "bogus-3", Time: now, Kind: events.TagSet, Tag: &events.Tag{Repo: "app", Name: "ghost", Digest: ghost}},
	}
	if err := e.log.Publish(context.Background(), bogus); err != nil {
		t.Fatal(err)
	}
	if ni, _, _ := e.proj.Get(events.NodeRef{Kind: events.NodeLayer, Repo: "b", Digest: layer}); ni.Present {
		t.Fatal("the corruption did not take")
	}

	r := e.reconciler(nil)
	d, err := r.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Counts[reconcile.DriftMissingFromProjection] != 2 || d.Counts[reconcile.DriftMissingFromStorage] != 1 || d.Published != 0 {
		t.Fatalf("verify: %s", d)
	}
	if c, _ := e.proj.Cursor(); c != cur+3 {
		t.Fatalf("verify moved the cursor from %d to %d", cur+3, c)
	}
	d, err = r.Reconcile(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if d.Published != 3 {
		t.Fatalf("reconcile: %s", d)
	}
	e.mustVerifyClean(r)
	e.collectAndVerify()
	e.mustPull("app:v1")
	e.mustPull("app:v2")
	e.mustPull("b:v1")
	e.mustNotFind("app", "ghost")
}

func TestReconcileUnreadableManifestAndOrphan(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	e.reg.PushRandom(t, "app:v1", 1)
	e.settle()
	// A revision link to data that is not a manifest, and data nothing links.
	orphan := []byte("not a manifest")
	od := digest.FromBytes(orphan)
	if err := e.store.StorageDriver().PutContent(context.Background(), blobDataPath(od), orphan); err != nil {
		t.Fatal(err)
	}
	if err := e.store.LinkRevision(context.Background(), "app", od); err != nil {
		t.Fatal(err)
	}
	r := e.reconciler(nil)
	d, err := r.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Counts[reconcile.DriftUnreadableManifest] != 1 || d.Counts[reconcile.DriftMissingFromProjection] != 1 {
		t.Fatalf("verify: %s", d)
	}
	free := []byte("free data")
	fd := digest.FromBytes(free)
	if err := e.store.StorageDriver().PutContent(context.Background(), blobDataPath(fd), free); err != nil {
		t.Fatal(err)
	}
	d, err = r.Reconcile(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if d.Counts[reconcile.DriftOrphanData] != 1 {
		t.Fatalf("reconcile: %s", d)
	}
	if ni, _, _ := e.proj.Get(events.NodeRef{Kind: events.NodeBlob, Digest: fd}); !ni.Present || ni.Lease == nil {
		t.Fatalf("orphan data in the projection: %+v", ni)
	}
}

var quietLogger = slog.New(slog.DiscardHandler)

func blobDataPath(d digest.Digest) string {
	return "/docker/registry/v2/blobs/" + d.Algorithm().String() + "/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
}

// graphEvents is a small registry's life as events: per image a layer and
// a config push, a manifest pushed by tag, and now and then a tag moved
// back, a tag deleted or a revision deleted.
func graphEvents(n int) []events.Event {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var out []events.Event
	for img := 0; len(out) < n; img++ {
		repo := fmt.Sprintf("team%d/app", img%5)
		layer := digest.FromString(fmt.Sprintf("layer-%d", img%13))
		config := digest.FromString(fmt.Sprintf("config-%d", img))
		man := digest.FromString(fmt.Sprintf("manifest-%d", img))
		tag := fmt.Sprintf("v%d", img%11)
		add := func(e events.Event) {
			e.ID = fmt.Sprintf("g-%06d", len(out))
			e.Time = t0.Add(time.Duration(len(out)) * time.Second)
			e.Source = "test"
			out = append(out, e)
		}
		add(events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: layer, Size: 1000}})
		add(events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: config, Size: 100}})
		add(events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: repo, Digest: man,
			MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 500, Tag: tag,
			Blobs: []events.Descriptor{{Digest: config, Size: 100}, {Digest: layer, Size: 1000}}}})
		switch img % 7 {
		case 3:
			add(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: tag}})
		case 5:
			add(events.Event{Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: repo, Digest: man}})
		case 6:
			prev := digest.FromString(fmt.Sprintf("manifest-%d", img-5))
			add(events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: prev}})
		}
	}
	return out[:n]
}

func TestRebuildFromStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, _ := jstest.Start(t)
	stream, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	if _, err := pub.PublishBatch(ctx, graphEvents(600)); err != nil {
		t.Fatal(err)
	}

	live, err := refcount.Open(filepath.Join(t.TempDir(), "live.db"), refcount.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Close() })
	// One event per transaction on both sides: refcount.Apply of a batch in
	// which a node dies and comes back keeps the dead node's zero-since
	// time, where separate transactions reset it, so dumps compare equal
	// only for equal batch boundaries.
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{MaxBatch: 1, Cursor: live.Cursor, Apply: func(b []events.Record) error {
		_, err := live.Apply(b)
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- f.Run(fctx) }()
	defer func() { stop(); <-ran }()
	if seq, err := f.CatchUp(ctx); err != nil || seq != 600 {
		t.Fatalf("catch up: %d, %v", seq, err)
	}

	st, err := store.New(ctx, "filesystem", map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// The storage holds only the shared layers' data: a reconcile through
	// the log observes every other present node absent, and its corrections
	// are in the stream, so the rebuild below replays them too.
	for i := range 13 {
		d := digest.FromString(fmt.Sprintf("layer-%d", i))
		if err := st.StorageDriver().PutContent(ctx, blobDataPath(d), []byte("layer")); err != nil {
			t.Fatal(err)
		}
	}
	jslog := &eventlog.JetStreamLog{Publisher: pub, Follower: f}
	r, err := reconcile.New(reconcile.Config{Projection: live, Store: st, Log: jslog, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Reconcile(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if d.AsOf != 600 || d.Published == 0 || d.Published != d.Counts[reconcile.DriftMissingFromStorage] {
		t.Fatalf("reconcile against empty storage: %s", d)
	}
	if d, err := r.Verify(ctx); err != nil || !d.Clean() {
		t.Fatalf("verify after reconcile: %s, %v", d, err)
	}
	last := 600 + uint64(d.Published) + 1 // the corrections and the Reconciled event
	path := filepath.Join(t.TempDir(), "rebuilt.db")
	rep, err := r.Rebuild(ctx, path, eventlog.StreamReplay(stream, 1))
	if err != nil {
		t.Fatal(err)
	}
	if rep.From != "log" || rep.Cursor != last || rep.LiveCursor != last || rep.Differences != 0 || rep.Nodes < 13 {
		t.Fatalf("rebuild: %+v", rep)
	}
	rebuilt, err := refcount.Open(path, refcount.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := rebuilt.StreamID(); err != nil || id != eventlog.StreamID(info) {
		t.Errorf("rebuilt projection bound to %q (%v), want the stream it replayed, %q", id, err, eventlog.StreamID(info))
	}
	var a, b bytes.Buffer
	if err := live.Dump(&a); err != nil {
		t.Fatal(err)
	}
	if err := rebuilt.Dump(&b); err != nil {
		t.Fatal(err)
	}
	rebuilt.Close()
	if a.Len() == 0 || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("dumps differ: live %d bytes, rebuilt %d bytes", a.Len(), b.Len())
	}
	if _, err := r.Rebuild(ctx, path, eventlog.StreamReplay(stream, 1)); err == nil {
		t.Fatal("rebuild over an existing file succeeded")
	}

	// A stream that no longer starts at 1: the rebuild walks storage.
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(100)); err != nil {
		t.Fatal(err)
	}
	rep, err = r.Rebuild(ctx, filepath.Join(t.TempDir(), "walked.db"), eventlog.StreamReplay(stream, 1))
	if err != nil {
		t.Fatal(err)
	}
	if rep.From != "storage" || rep.Scanned == nil {
		t.Fatalf("rebuild of a truncated stream: %+v", rep)
	}
	// A walked projection's cursor is no position in the log: it is bound
	// to no stream, so no follower follows it.
	walked, err := refcount.Open(rep.Path, refcount.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer walked.Close()
	if id, err := walked.StreamID(); err != nil || id != reconcile.StorageWalkStreamID {
		t.Errorf("walked projection bound to %q (%v)", id, err)
	}
	if err := walked.BindStream(eventlog.StreamID(info)); !errors.Is(err, refcount.ErrStreamChanged) {
		t.Errorf("a walked projection accepts a stream: %v", err)
	}
}
