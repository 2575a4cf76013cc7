package collector_test

// Regression tests of an adversarial review of the delivery-fault
// handling: each one lost data, or stalled collection, before its fix.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// Blob data cannot be healed: an instance that is quiet for unlinks still
// bounds purges until it has been quiet for the whole retention. Here the
// same content is pushed again through a replica whose queue stalls while
// the data waits out its retention.
func TestPurgeWaitsForAStalledReplica(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	r2 := e.reg.Replica(t)
	img := regtest.RandomImage(t, 1)
	e.reg.Push(t, "a:v1", img)
	r2.ManifestStatus(t, "marker", "m") // the replica is known from the start
	e.settle()
	e.reg.DeleteTag(t, "a", "v1")
	e.settle()
	for range 3 { // the revision, then its layer links; the data waits
		e.advance(2 * testGrace)
		e.pass()
	}
	e.log.mu.Lock()
	want := e.log.touches["marker"] + 1
	e.log.mu.Unlock()
	r2.ManifestStatus(t, "marker", "m") // the replica delivered just now
	regtest.WaitFor(t, "the replica's delivery", func() bool {
		e.log.mu.Lock()
		defer e.log.mu.Unlock()
		return e.log.touches["marker"] >= want
	})
	r2.Faults.Hold()
	r2.Push(t, "x:v1", img) // acknowledged; its notifications stall
	regtest.WaitFor(t, "held", func() bool { return r2.Faults.Held() > 0 })
	e.advance(2 * testGrace) // the data is past its retention, the replica quiet for unlinks
	rep := e.pass()
	if rep.View == nil || len(rep.View.Quiet) == 0 {
		t.Fatalf("view %+v: want the stalled replica quiet", rep.View)
	}
	e.mustPull("x:v1")
	r2.Faults.Release()
	regtest.WaitFor(t, "the replica's backlog", func() bool { return r2.Faults.Pending() == 0 })
	e.collectAndVerify()
	e.mustPull("x:v1")
}

// A revision the projection knows only by name (its manifest could not be
// read, the notification carried no references) explains nothing: the
// storage check reads it.
func TestUnverifiedRevisionKeepsItsLayers(t *testing.T) {
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{wrap: func(s *sinkLog) distribution.Sink { return stripRefs{s, "u"} }})
	e.reg.Push(t, "u:v1", regtest.RandomImage(t, 2))
	e.settle()
	for range 3 {
		e.advance(2 * testGrace)
		e.pass()
	}
	e.mustPull("u:v1")
}

// stripRefs makes the manifest pushes of repo what translation makes when
// the notification carries no references and the manifest read fails.
type stripRefs struct {
	*sinkLog
	repo string
}

func (s stripRefs) PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	for i := range evs {
		if m := evs[i].Manifest; m != nil && m.Repo == s.repo {
			cp := *m
			cp.Blobs, cp.Children, cp.Unverified = nil, nil, true
			evs[i].Manifest = &cp
		}
	}
	return s.sinkLog.PublishBatch(ctx, evs)
}

// Recovery redoes an intent only through the view and the storage check:
// a revision tagged while refgc was down keeps its link.
func TestRecoveryChecksStorage(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := regtest.RandomImage(t, 1)
	d := e.reg.PushByDigest(t, "app", img)
	e.settle()
	e.advance(2 * testGrace)
	e.settle()
	// A pass recorded the intent; the process died before the storage operation.
	if _, err := e.proj.BeginCollect("crashed-1", manifestRef("app", d), e.now(), 0); err != nil {
		t.Fatal(err)
	}
	e.reg.Faults.Where(regtest.ManifestPush("app")).Hold()
	e.reg.Push(t, "app:v1", img) // tagged while refgc is down; the notification waits
	e.waitHeld(1)
	col, err := collector.New(collector.Config{Projection: e.proj, Storage: e.store, Log: e.log,
		Now: e.now, Reconcile: e.reconcile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := col.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.mustPull("app:v1")
	if ins, _ := e.proj.Intents(); len(ins) != 0 {
		t.Fatalf("intents left: %+v", ins)
	}
	e.reg.Faults.Release()
	e.collectAndVerify()
	e.mustPull("app:v1")
}

// A repository whose storage cannot be read (an empty tag link left by a
// crashed write) waits; the others are collected.
func TestUnreadableRepositoryDoesNotStopTheOthers(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	e.reg.PushByDigest(t, "a", regtest.RandomImage(t, 1))
	img := e.reg.PushRandom(t, "b:v1", 1)
	e.reg.DeleteTag(t, "b", "v1")
	e.settle()
	dir := filepath.Join(e.reg.Root, "docker/registry/v2/repositories/a/_manifests/tags/broken/current")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "link"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.advance(2 * testGrace)
	rep := e.pass()
	if rep.Unlinked == 0 || rep.Refused == 0 {
		t.Fatalf("report %+v: want b collected and a's candidate refused", rep)
	}
	e.mustNotFind("b", regtest.Digest(t, img).String())
}

// A link written again without a notification (a lost one) is refused by
// the storage check once: the reconcile of its repository states it again,
// and collection, there and elsewhere, goes on.
func TestRewrittenLinkIsRefusedOnce(t *testing.T) {
	w := newWorld(t, 1)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	cfgA, layerA := w.pushBlob(r, "a", mtConf, 16), w.pushBlob(r, "a", mtLayer, 64)
	w.putManifest("a", "v1", []events.Descriptor{cfgA, layerA}, nil, nil)
	cfgJ, layerJ := w.pushBlob(r, "junk", mtConf, 16), w.pushBlob(r, "junk", mtLayer, 64)
	w.putManifest("junk", "v1", []events.Descriptor{cfgJ, layerJ}, nil, nil)
	w.clock = w.clock.Add(testGrace / 2)
	w.linkLayer("a", layerA.Digest) // uploaded again; the notification was lost
	for _, repo := range []string{"a", "junk"} {
		w.must(w.store.DeleteTag(ctx, repo, "v1"))
		w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: "v1"}})
	}
	refused := 0
	for range 8 {
		w.clock = w.clock.Add(testRetention)
		refused += w.pass().Refused
	}
	if refused != 1 {
		t.Errorf("%d refusals, want one", refused)
	}
	if w.hasBlob(layerJ.Digest) || w.hasBlob(layerA.Digest) {
		t.Errorf("garbage left: junk's layer %v, a's layer %v", w.hasBlob(layerJ.Digest), w.hasBlob(layerA.Digest))
	}
}

// The reconciler heals too: a tag in storage whose revision the collector
// unlinked (its notification lost) gets the revision back while the data
// is there, and is reported as lost once the data is gone.
func TestReconcilerHealsWhatStorageUses(t *testing.T) {
	w := newWorld(t, 1)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(5, 6))
	image := func() events.Descriptor {
		cfg, layer := w.pushBlob(r, "app", mtConf, 16), w.pushBlob(r, "app", mtLayer, 64)
		return w.putManifest("app", "", []events.Descriptor{cfg, layer}, nil, nil)
	}
	healable, lost := image(), image()
	w.clock = w.clock.Add(2 * testGrace)
	w.pass() // both untagged revisions are unlinked
	if w.hasRevision("app", healable.Digest) || w.hasRevision("app", lost.Digest) {
		t.Fatal("the untagged revisions were not unlinked")
	}
	for range 3 { // lost's data is purged past the retention; healable is kept in the trash below
		w.clock = w.clock.Add(testRetention)
		w.pass()
	}
	if w.hasBlob(lost.Digest) {
		t.Fatal("the data was not purged")
	}
	// healable again: unlinked just now, its data still there.
	healable = image()
	w.clock = w.clock.Add(2 * testGrace)
	w.pass()
	// Tags written while their notifications were lost.
	w.linkTag("app", "keep", healable.Digest)
	w.linkTag("app", "gone", lost.Digest)
	d, err := w.rec.Reconcile(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if d.Counts[reconcile.DriftUnlinkedLive] != 1 || d.Healed != 1 || d.Counts[reconcile.DriftLost] != 1 {
		t.Fatalf("drift %s healed %d: want one healed and one lost", d, d.Healed)
	}
	if !w.hasRevision("app", healable.Digest) {
		t.Fatal("the tagged revision was not linked again")
	}
	if v, err := w.rec.Verify(ctx); err != nil || v.Counts[reconcile.DriftLost] != 1 || v.Counts[reconcile.DriftUnlinkedLive] != 0 {
		t.Fatalf("verify after: %s, %v", v, err)
	}
}

// A referrer stays while its subject's revision is in storage: here the
// subject was unlinked, then pushed again with a tag whose notification is
// late, when the referrer's grace ends.
func TestReferrerStaysWhileItsSubjectIsStored(t *testing.T) {
	w := newWorld(t, 1)
	r := rand.New(rand.NewPCG(7, 8))
	cfg, layer := w.pushBlob(r, "a", mtConf, 16), w.pushBlob(r, "a", mtLayer, 64)
	s := w.putManifest("a", "v1", []events.Descriptor{cfg, layer}, nil, nil)
	w.clock = w.clock.Add(testGrace / 2)
	cfg2, layer2 := w.pushBlob(r, "a", mtConf, 17), w.pushBlob(r, "a", mtLayer, 65)
	ref := w.putManifest("a", "", []events.Descriptor{cfg2, layer2}, nil, &s)
	w.must(w.store.DeleteTag(context.Background(), "a", "v1"))
	w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: "a", Name: "v1"}})
	w.clock = w.clock.Add(testGrace + testGrace/4)
	w.pass() // the subject is unlinked; the referrer is still in its grace
	if w.hasRevision("a", s.Digest) || !w.hasRevision("a", ref.Digest) {
		t.Fatal("want the subject unlinked and the referrer kept")
	}
	w.linkRevision("a", s.Digest) // pushed again as a:v2; the notification is late
	w.linkTag("a", "v2", s.Digest)
	w.clock = w.clock.Add(2 * testGrace)
	rep := w.pass() // fails if the referrer goes
	if rep.Refused == 0 {
		t.Fatalf("report %+v: want the referrer refused", rep)
	}
}

// A registry instance that restarted with notifications in its queue, and
// whose successor says nothing, is silent: after the trash retention the
// collector takes it for gone and pauses until a reconcile, which finds
// what the lost notifications said, before any purge.
func TestSilentInstancePausesPurges(t *testing.T) {
	w := newWorld(t, 1)
	r := rand.New(rand.NewPCG(9, 10))
	via := 0
	instance := [2]int{}
	w.stamp = func(e *events.Event) {
		e.Source, e.Host = fmt.Sprintf("distribution:reg%d-%d", via, instance[via]), fmt.Sprintf("reg%d:5000", via)
		e.Received = w.clock
	}
	cfg, layer := w.pushBlob(r, "a", mtConf, 16), w.pushBlob(r, "a", mtLayer, 64)
	w.putManifest("a", "v1", []events.Descriptor{cfg, layer}, nil, nil)
	via = 1
	w.emit(events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: "a", Digest: cfg.Digest}})
	w.pass() // both instances known (the second one's arrival is reconciled)
	// Through instance 1, b mounts the layer and pushes an image using it;
	// the instance restarts before sending, and its successor stays idle.
	w.mute = true
	w.linkLayer("b", layer.Digest)
	cfgB := w.pushBlob(r, "b", mtConf, 17)
	w.putManifest("b", "v1", []events.Descriptor{cfgB, layer}, nil, nil)
	w.mute = false
	instance[1]++
	via = 0
	w.must(w.store.DeleteTag(context.Background(), "a", "v1"))
	w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: "a", Name: "v1"}})
	for range 12 {
		w.clock = w.clock.Add(testGrace)
		w.emit(events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: "a", Digest: cfg.Digest}})
		w.pass() // fails if b's layer data is purged
	}
	if !w.hasBlob(layer.Digest) {
		t.Fatal("the layer b uses was purged")
	}
	if srcs, _ := w.proj.Sources(); len(srcs) != 2 || !srcs[1].Gone {
		t.Fatalf("sources %+v: want the silent instance gone", srcs)
	}
}
