package collector_test

// Regression tests of an adversarial review of the delivery-fault
// handling: each one lost data, or stalled collection, before its fix.

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
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
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{wrap: func(s *sinkLog) events.Sink { return stripRefs{s, "u"} }})
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

func (s stripRefs) PublishBatch(ctx context.Context, evs []events.Event) ([]events.PubResult, error) {
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
	if d.Counts[collector.DriftUnlinkedLive] != 1 || d.Healed != 1 || d.Counts[collector.DriftLost] != 1 {
		t.Fatalf("drift %s healed %d: want one healed and one lost", d, d.Healed)
	}
	if !w.hasRevision("app", healable.Digest) {
		t.Fatal("the tagged revision was not linked again")
	}
	if v, err := w.rec.Verify(ctx); err != nil || v.Counts[collector.DriftLost] != 1 || v.Counts[collector.DriftUnlinkedLive] != 0 {
		t.Fatalf("verify after: %s, %v", v, err)
	}
}
