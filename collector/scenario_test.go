package collector_test

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

func TestScenarios(t *testing.T) {
	tests := []struct {
		name   string
		policy refcount.Policy
		run    func(e *env)
	}{
		{"tag moved", refcount.PolicyDelete, func(e *env) {
			e.reg.PushRandom(e.t, "app:v1", 2)
			e.reg.PushRandom(e.t, "app:v1", 2)
			if rep := e.collectAndVerify(); rep.Unlinked == 0 || rep.Purged == 0 {
				e.t.Errorf("nothing collected: %+v", rep)
			}
			e.mustPull("app:v1")
		}},
		{"tag deleted", refcount.PolicyDelete, func(e *env) {
			e.reg.PushRandom(e.t, "app:v1", 2)
			e.reg.PushRandom(e.t, "app:v2", 1)
			e.reg.DeleteTag(e.t, "app", "v1")
			e.collectAndVerify()
			e.mustPull("app:v2")
			e.mustNotFind("app", "v1")
		}},
		{"manifest deleted by digest", refcount.PolicyDelete, func(e *env) {
			img := e.reg.PushRandom(e.t, "app:v1", 2)
			e.reg.DeleteManifest(e.t, "app", regtest.Digest(e.t, img))
			e.collectAndVerify()
			e.mustNotFind("app", regtest.Digest(e.t, img).String())
		}},
		{"index deleted: children go unless held elsewhere", refcount.PolicyDelete, func(e *env) {
			a, b := regtest.RandomImage(e.t, 1), regtest.RandomImage(e.t, 1)
			idx := e.reg.PushIndex(e.t, "app", "multi", a, b)
			e.reg.Push(e.t, "app:keep-b", b)
			e.reg.DeleteTag(e.t, "app", "multi")
			e.reg.DeleteManifest(e.t, "app", regtest.Digest(e.t, idx))
			e.collectAndVerify()
			e.mustNotFind("app", regtest.Digest(e.t, a).String())
			e.mustPull("app:keep-b")
		}},
		{"a child deleted while listed in a live index keeps its layers", refcount.PolicyDelete, func(e *env) {
			a, b := regtest.RandomImage(e.t, 2), regtest.RandomImage(e.t, 1)
			e.reg.PushIndex(e.t, "app", "multi", a, b)
			e.reg.DeleteManifest(e.t, "app", regtest.Digest(e.t, a))
			// The oracle stops at the missing revision; refgc keeps the
			// child's data while the index lists it.
			e.kept = map[string]bool{"blob " + regtest.Digest(e.t, a).String(): true}
			for _, l := range regtest.BlobDigests(e.t, a) {
				e.kept["layer app@"+l.String()] = true
				e.kept["blob "+l.String()] = true
			}
			e.collectAndVerify()
			for _, l := range regtest.BlobDigests(e.t, a) {
				if code := e.reg.BlobStatus(e.t, "app", l); code != 200 {
					e.t.Errorf("layer %s of the deleted child answers %d", l, code)
				}
			}
		}},
		{"untagged-only repository keeps its layer links under keep", refcount.PolicyKeep, func(e *env) {
			img := regtest.RandomImage(e.t, 2)
			d := e.reg.PushByDigest(e.t, "untagged", img)
			e.reg.PushRandom(e.t, "other:v1", 1)
			e.reg.DeleteTag(e.t, "other", "v1")
			e.collectAndVerify()
			e.mustPull("untagged@" + d.String())
		}},
		{"a referrer goes with its subject", refcount.PolicyDelete, func(e *env) {
			img := e.reg.PushRandom(e.t, "app:v1", 1)
			art := e.reg.PushReferrer(e.t, "app", regtest.Describe(e.t, img), "application/vnd.example.sig")
			e.settle()
			if ni, _, _ := e.proj.Get(manifestRef("app", art.Digest)); ni.Count != 1 {
				e.t.Fatalf("referrer held %d times, want 1 (by its subject)", ni.Count)
			}
			e.reg.DeleteTag(e.t, "app", "v1")
			e.collectAndVerify()
			e.mustNotFind("app", art.Digest.String())
		}},
		{"a blob shared by two repositories survives deletion in one", refcount.PolicyDelete, func(e *env) {
			base := regtest.RandomImage(e.t, 2)
			e.reg.Push(e.t, "a:v1", base)
			e.reg.Push(e.t, "b:v1", regtest.SharingImage(e.t, base, 2, 1))
			e.reg.DeleteTag(e.t, "a", "v1")
			e.collectAndVerify()
			e.mustPull("b:v1")
		}},
		{"a blob pushed but not referenced lives until its lease ends", refcount.PolicyDelete, func(e *env) {
			layer, err := random.Layer(512, "application/vnd.oci.image.layer.v1.tar")
			if err != nil {
				e.t.Fatal(err)
			}
			if err := remote.WriteLayer(e.reg.Repo(e.t, "uploads"), layer); err != nil {
				e.t.Fatal(err)
			}
			d, _ := layer.Digest()
			e.settle()
			e.advance(testGrace / 2)
			if _, err := e.col.Pass(context.Background()); err != nil {
				e.t.Fatal(err)
			}
			if code := e.reg.BlobStatus(e.t, "uploads", d); code != 200 {
				e.t.Fatalf("blob within its lease answers %d", code)
			}
			e.collectAndVerify()
			if code := e.reg.BlobStatus(e.t, "uploads", d); code != 404 {
				e.t.Fatalf("blob past its lease answers %d", code)
			}
		}},
	}
	for _, backend := range []string{"filesystem", "s3"} {
		for _, tc := range tests {
			t.Run(backend+"/"+tc.name, func(t *testing.T) {
				tc.run(newEnvWith(t, tc.policy, envOptions{s3: backend == "s3"}))
			})
		}
	}
}

func TestRestoreAndDryRun(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := e.reg.PushRandom(e.t, "app:v1", 2)
	d := regtest.Digest(t, img)
	e.reg.DeleteTag(t, "app", "v1")
	e.settle()
	e.advance(2 * testGrace)
	e.settle() // the registry has delivered up to now: a new collector need not wait for it

	dry, err := collector.New(collector.Config{Projection: e.proj, Log: e.log, Now: e.now, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := dry.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if plan.Unlinked != 1 || plan.Removed[0].Node != manifestRef("app", d) || plan.UnlinkedBytes == 0 {
		t.Fatalf("dry run: %+v", plan)
	}
	e.mustPull("app@" + d.String()) // a dry run deletes nothing
	e.settle()                      // the pull's notification is in, with its time
	e.advance(2 * testGrace)        // and its lease ends

	if _, err := e.col.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.mustNotFind("app", d.String())
	res, err := e.col.Restore(context.Background(), "app", digest.Digest(d.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tags) != 1 || res.Tags[0] != "v1" {
		t.Fatalf("restored %+v", res)
	}
	e.mustPull("app:v1")
	if ni, _, _ := e.proj.Get(manifestRef("app", d)); !ni.Present || ni.Count != 1 {
		t.Fatalf("projection after restore: %+v", ni)
	}
	e.collectAndVerify()
	e.mustPull("app:v1")
}
