package collector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// The delivery faults of a real registry's notifications, one at a time,
// on a real registry: each test fails if refgc trusts its projection alone.

// pass runs one collector pass and fails the test on an error.
func (e *env) pass() collector.Report {
	e.t.Helper()
	rep, err := e.col.Pass(context.Background())
	if err != nil {
		e.t.Fatalf("pass: %v (report %+v)", err, rep)
	}
	return rep
}

// waitHeld waits until the registry's relay holds n notifications.
func (e *env) waitHeld(n int) {
	e.t.Helper()
	regtest.WaitFor(e.t, "held notifications", func() bool { return e.reg.Faults.Held() >= n })
}

// Case 1: a revision pushed by digest is tagged while the tag's
// notification waits in the registry's queue; the collector must not
// unlink what the tag now points at.
func TestLateTagIsSeenInStorage(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := regtest.RandomImage(t, 1)
	e.reg.PushByDigest(t, "app", img)
	e.settle()
	e.advance(2 * testGrace) // the untagged revision is past its grace
	e.reg.Faults.Where(regtest.ManifestPush("app")).Hold()
	e.reg.Push(t, "app:v1", img)
	e.waitHeld(1)
	rep := e.pass()
	if rep.Unlinked != 0 || rep.Refused == 0 {
		t.Fatalf("report %+v: want the revision refused, nothing unlinked", rep)
	}
	e.mustPull("app:v1")
	// The refusal paused the repository; the next pass reconciles it
	// first, and then knows the tag even before its notification comes.
	rep = e.pass()
	if len(rep.View.Paused) != 0 {
		t.Fatalf("still paused after the reconcile: %+v", rep.View.Paused)
	}
	e.reg.Faults.Release()
	e.collectAndVerify()
	e.mustPull("app:v1")
}

// Case 1, lost race: the tag is written between the storage check and the
// unlink. The late notification heals the revision.
func TestLateTagHealsUnlinkedRevision(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := regtest.RandomImage(t, 1)
	d := e.reg.PushByDigest(t, "app", img)
	e.settle()
	e.advance(2 * testGrace)
	e.reg.Faults.Where(regtest.ManifestPush("app")).Hold()
	e.settle() // the registry's watermark is now
	rs := &racingStorage{Storage: e.store, kind: events.NodeManifest, hook: func() {
		e.reg.Push(t, "app:v1", img) // acknowledged to the client, then unlinked
	}}
	col, err := collector.New(collector.Config{Projection: e.proj, Storage: rs, Reader: e.store, Log: e.log, Now: e.now})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := col.Pass(context.Background())
	if err != nil || rep.Unlinked != 1 {
		t.Fatalf("pass %+v, %v: want the revision unlinked", rep, err)
	}
	if code := e.reg.ManifestStatus(t, "app", "v1"); code != http.StatusNotFound {
		t.Fatalf("app:v1 answers %d between the unlink and the heal; the test lost its race", code)
	}
	e.reg.Faults.Release()
	e.settle()
	rep = e.pass()
	if rep.Healed == 0 {
		t.Fatalf("report %+v: want a heal", rep)
	}
	// Healed at the first pass after the late notification arrived: the
	// object was unavailable for the notification's delay and no more.
	if rep.HealLag <= 0 || rep.HealLag > time.Minute {
		t.Errorf("heal lag %s, want the time to the next pass", rep.HealLag)
	}
	e.mustPull("app:v1")
	e.mustPull("app@" + d.String())
	e.collectAndVerify()
	e.mustPull("app:v1")
}

// Case 2: lost notifications.
func TestLostNotifications(t *testing.T) {
	t.Run("tag push lost", func(t *testing.T) {
		e := newEnv(t, refcount.PolicyDelete)
		img := regtest.RandomImage(t, 1)
		e.reg.PushByDigest(t, "app", img)
		e.settle()
		e.reg.Faults.Where(regtest.ManifestPush("app")).Drop(1)
		e.reg.Push(t, "app:v1", img)
		e.settle()
		e.advance(2 * testGrace)
		e.pass()
		e.mustPull("app:v1")
		e.collectAndVerify()
		e.mustPull("app:v1")
	})
	t.Run("manifest push lost, blob pushes arrived", func(t *testing.T) {
		e := newEnv(t, refcount.PolicyDelete)
		e.reg.Faults.Where(regtest.ManifestPush("app")).Drop(1)
		e.reg.PushRandom(t, "app:v1", 2)
		e.settle()
		e.advance(2 * testGrace) // the layer links' leases end
		rep := e.pass()
		if rep.Unlinked != 0 {
			t.Fatalf("report %+v: unlinked layers of a tagged image", rep)
		}
		e.mustPull("app:v1")
		e.collectAndVerify()
		e.mustPull("app:v1")
	})
}

// Case 3: two replicas on one storage. app:v1 is deleted through replica
// 1, a new app:v1 pushed through replica 2, and replica 1's notification
// arrives last.
func TestReorderedTagChangesAcrossReplicas(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	r2 := e.reg.Replica(t)
	e.reg.PushRandom(t, "app:v1", 1)
	e.settle()
	e.reg.Faults.Where(regtest.On("delete", "app")).Hold()
	e.reg.DeleteTag(t, "app", "v1")
	e.waitHeld(1)
	img := r2.PushRandom(t, "app:v1", 1)
	regtest.WaitFor(t, "replica 2's push applied", func() bool {
		ni, ok, _ := e.proj.Get(manifestRef("app", regtest.Digest(t, img)))
		return ok && ni.Count > 0
	})
	e.reg.Faults.Release()
	e.settle()
	if ni, ok, _ := e.proj.Get(events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "v1"}); !ok || !ni.Present {
		t.Fatalf("the older delete won over the newer push: %+v", ni)
	}
	e.collectAndVerify()
	e.mustPull("app:v1")
}

// Case 5: a queue that lags more than the grace. The blob pushes arrive,
// the manifest push waits; the collector's clock moves past the layers'
// leases. While the instance keeps delivering, its watermark holds
// collection back; once it is quiet, the storage check does.
func TestLaggingQueue(t *testing.T) {
	for _, quiet := range []bool{false, true} {
		name := map[bool]string{false: "delivering", true: "quiet"}[quiet]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, refcount.PolicyDelete)
			quietAfter := 10 * testGrace // longer than the test: the instance keeps bounding
			if quiet {
				quietAfter = testGrace / 2 // quiet by the pass, not yet silent (the retention)
			}
			col, err := collector.New(collector.Config{Projection: e.proj, Storage: e.store, Log: e.log, Now: e.now,
				QuietAfter: quietAfter, Reconcile: e.reconcile})
			if err != nil {
				t.Fatal(err)
			}
			e.col = col
			e.reg.Faults.Where(regtest.ManifestPush("app")).Hold()
			e.reg.PushRandom(t, "app:v1", 2)
			e.waitHeld(1)
			e.settle()
			e.advance(2 * testGrace)
			rep := e.pass()
			if rep.Unlinked != 0 {
				t.Fatalf("report %+v: unlinked layers of a tagged image", rep)
			}
			if !quiet && (rep.View == nil || rep.View.Bounding == "") {
				t.Fatalf("view %+v: want the instance's watermark to bound collection", rep.View)
			}
			if quiet && (rep.Refused == 0 || len(rep.View.Quiet) == 0) {
				t.Fatalf("report %+v: want a quiet instance and the storage check's refusal", rep)
			}
			e.mustPull("app:v1")
			e.reg.Faults.Release()
			e.collectAndVerify()
			e.mustPull("app:v1")
		})
	}
}

// A refused notification (over the webhook's limit, dead-lettered with
// 200) pauses collection until a reconcile has run.
func TestRefusedNotificationPausesUntilReconciled(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := e.reg.PushRandom(t, "app:v1", 1)
	e.settle()
	e.reg.DeleteTag(t, "app", "v1")
	e.settle()
	e.advance(2 * testGrace)
	ev := events.Event{V: events.Version, ID: "refused-1", Time: e.now().UTC(), Source: "distribution:x",
		Kind: events.Refused, Refused: &events.RefusedRef{Reason: "too_large"}}
	if _, err := e.log.PublishBatch(context.Background(), []events.Event{ev}); err != nil {
		t.Fatal(err)
	}
	plain, err := collector.New(collector.Config{Projection: e.proj, Storage: e.store, Log: e.log, Now: e.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Pass(context.Background()); !errors.Is(err, collector.ErrPaused) {
		t.Fatalf("pass without a reconcile: %v, want ErrPaused", err)
	}
	// (Not a pull: a pull would lease the revision again.)
	if _, err := e.store.LinkModTime(context.Background(), manifestRef("app", regtest.Digest(t, img))); err != nil {
		t.Fatalf("collected while paused: %v", err)
	}
	rep := e.pass() // reconciles first, then collects
	if rep.Unlinked == 0 {
		t.Fatalf("report %+v: want the untagged revision collected after the reconcile", rep)
	}
}

// An index whose entries are blobs (BuildKit's cache export), accepted by
// a registry that does not check index entries, holds them as layer links.
func TestIndexOfBlobs(t *testing.T) {
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{configure: func(c *configuration.Configuration) {
		c.Validation.Manifests.Indexes.Platforms = "none"
	}})
	var entries []map[string]any
	var digests []v1.Hash
	for _, mt := range []string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.buildkit.cacheconfig.v0"} {
		l, err := random.Layer(256, types.MediaType(mt))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(e.reg.Repo(t, "cache"), l); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		size, _ := l.Size()
		digests = append(digests, d)
		entries = append(entries, map[string]any{"mediaType": mt, "digest": d.String(), "size": size})
	}
	body, err := json.Marshal(map[string]any{"schemaVersion": 2,
		"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPut, e.reg.URL+"/v2/cache/manifests/buildcache", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put the cache index: %d", resp.StatusCode)
	}
	e.collectAndVerify()
	for _, d := range digests {
		if code := e.reg.BlobStatus(t, "cache", d); code != http.StatusOK {
			t.Errorf("cache blob %s answers %d", d, code)
		}
	}
}

// Restoring an index brings back its children from the trash with it.
func TestRestoreIndexRelinksChildren(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	idx := e.reg.PushIndex(t, "app", "idx", regtest.RandomImage(t, 1), regtest.RandomImage(t, 1))
	d := regtest.Digest(t, idx)
	e.reg.DeleteTag(t, "app", "idx")
	e.settle()
	for range 2 { // the index, then its children, within the trash retention
		e.advance(testGrace + testGrace/10)
		e.pass()
	}
	if code := e.reg.ManifestStatus(t, "app", d.String()); code != http.StatusNotFound {
		t.Fatalf("the index answers %d after collection", code)
	}
	res, err := e.col.Restore(context.Background(), "app", digest.Digest(d.String()))
	if err != nil {
		t.Fatal(err)
	}
	if res.Children != 2 {
		t.Fatalf("restored %+v, want both children", res)
	}
	e.mustPull("app@" + d.String())
}

// Case 4: a notification the webhook cannot take (here over its body
// limit: a manifest whose layer carries a 1.1 MB annotation, which
// includereferences copies into the notification) is dead-lettered and
// answered 200. The registry's queue goes on, and collection in the
// repository waits for a reconcile, which finds what the notification said.
func TestOversizedNotificationDoesNotBlockTheQueue(t *testing.T) {
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{maxBody: 256 << 10})
	layer, err := random.Layer(256, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(regtest.OCI(empty.Image), mutate.Addendum{Layer: layer,
		Annotations: map[string]string{"org.example.notes": strings.Repeat("x", 1100<<10)}})
	if err != nil {
		t.Fatal(err)
	}
	e.deadOK = true // every notification naming the manifest is too large, pulls too
	e.reg.Push(t, "big:v1", img)
	regtest.WaitFor(t, "the dead letter", func() bool {
		e.log.mu.Lock()
		defer e.log.mu.Unlock()
		return len(e.log.dead) > 0
	})
	e.reg.PushRandom(t, "after:v1", 1)
	e.settle() // later notifications arrive: nothing blocks the queue
	if ps, _ := e.proj.Pauses(); len(ps) == 0 {
		t.Fatal("no pause after a refused notification")
	}
	e.advance(2 * testGrace)
	e.pass() // reconciles first
	if ps, _ := e.proj.Pauses(); len(ps) != 0 {
		t.Fatalf("pauses after the pass: %+v", ps)
	}
	e.mustPull("big:v1")
	e.collectAndVerify()
	e.mustPull("big:v1")
	e.mustPull("after:v1")
}
