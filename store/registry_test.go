package store

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/internal/regtest"
)

// storeSets reads everything through the Store, in the oracle's key format.
func storeSets(t *testing.T, s Store) regtest.Sets {
	t.Helper()
	ctx := context.Background()
	out := regtest.Sets{Tags: regtest.Set{}, Revisions: regtest.Set{}, Layers: regtest.Set{}, Blobs: regtest.Set{}}
	var names []string
	if err := s.Repositories(ctx, func(r string) error { names = append(names, r); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, repo := range names {
		if err := s.Tags(ctx, repo, func(tag string, _ digest.Digest) error { out.Tags.Add(repo + ":" + tag); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := s.Revisions(ctx, repo, func(d digest.Digest) error { out.Revisions.Add(repo + "@" + d.String()); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := s.LayerLinks(ctx, repo, func(d digest.Digest) error { out.Layers.Add(repo + "@" + d.String()); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Blobs(ctx, func(d digest.Digest) error { out.Blobs.Add(d.String()); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameSets(t *testing.T, what string, a, b regtest.Sets) {
	t.Helper()
	if d := a.Minus(b); len(d) > 0 {
		t.Errorf("%s: only in the first: %v", what, d)
	}
	if d := b.Minus(a); len(d) > 0 {
		t.Errorf("%s: only in the second: %v", what, d)
	}
}

func dg(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }

// TestAgainstRegistry pushes through a real registry, checks the store
// reads exactly what is on disk (by the independent oracle) and what was
// pushed, then unlinks and purges through the store and checks that the
// registry API answers 404 for exactly those objects while everything else
// still answers and pulls; finally restores the unlinked ones.
func TestAgainstRegistry(t *testing.T) {
	ctx := context.Background()
	r := regtest.Start(t, regtest.Options{})
	s := FromDriver(r.Driver)

	base := r.PushRandom(t, "app:v1", 2)
	shared := regtest.SharingImage(t, base, 1, 1)
	r.Push(t, "app:v2", shared)
	untagged := regtest.RandomImage(t, 1)
	r.PushByDigest(t, "app", untagged)
	c1, c2 := regtest.OCI(regtest.RandomImage(t, 1)), regtest.RandomImage(t, 1)
	idx := r.PushIndex(t, "multi/arch", "idx", c1, c2)
	art := r.PushReferrer(t, "app", regtest.Describe(t, base), "application/vnd.example.sbom")
	r.Mount(t, "app:v1", "other/copy:v1")
	victim := r.PushRandom(t, "a/b/c:victim", 1)

	present, err := regtest.Present(r.Root)
	if err != nil {
		t.Fatal(err)
	}
	before := storeSets(t, s)
	sameSets(t, "store vs oracle", before, present)

	// What was pushed is what the store reads.
	for _, want := range []string{"app:v1", "app:v2", "multi/arch:idx", "other/copy:v1", "a/b/c:victim"} {
		if !before.Tags.Has(want) {
			t.Errorf("tag %s not read", want)
		}
	}
	tagsOf := map[string]digest.Digest{}
	if err := s.Tags(ctx, "app", func(tag string, d digest.Digest) error { tagsOf[tag] = d; return nil }); err != nil {
		t.Fatal(err)
	}
	if tagsOf["v1"] != dg(regtest.Digest(t, base)) || tagsOf["v2"] != dg(regtest.Digest(t, shared)) || len(tagsOf) != 2 {
		t.Errorf("app tags %v", tagsOf)
	}
	for _, k := range []string{
		"app@" + regtest.Digest(t, untagged).String(), "app@" + art.Digest.String(),
		"multi/arch@" + regtest.Digest(t, idx).String(), "multi/arch@" + regtest.Digest(t, c1).String(),
		"multi/arch@" + regtest.Digest(t, c2).String(), "other/copy@" + regtest.Digest(t, base).String(),
	} {
		if !before.Revisions.Has(k) {
			t.Errorf("revision %s not read", k)
		}
	}
	for _, h := range regtest.BlobDigests(t, base) {
		for _, repo := range []string{"app", "other/copy"} {
			if !before.Layers.Has(repo + "@" + h.String()) {
				t.Errorf("layer link %s@%s not read", repo, h)
			}
		}
	}
	if h, err := s.TagHistory(ctx, "app", "v1"); err != nil || !slices.Equal(h, []digest.Digest{dg(regtest.Digest(t, base))}) {
		t.Errorf("history of app:v1: %v, %v", h, err)
	}
	raw, err := base.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.ReadBlob(ctx, dg(regtest.Digest(t, base)), 1<<20); err != nil || string(got) != string(raw) {
		t.Errorf("ReadBlob of the manifest: %v", err)
	}
	vl := regtest.BlobDigests(t, victim)[1] // the victim's only layer
	if n, err := s.StatBlob(ctx, dg(vl)); err != nil || n <= 0 {
		t.Errorf("StatBlob: %d, %v", n, err)
	}

	// Unlink and purge through the store.
	sharedD, untaggedD := regtest.Digest(t, shared), regtest.Digest(t, untagged)
	copyLayer := regtest.BlobDigests(t, base)[1]
	if err := s.DeleteTag(ctx, "app", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRevision(ctx, "app", dg(untaggedD), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLayerLink(ctx, "other/copy", dg(copyLayer)); err != nil {
		t.Fatal(err)
	}
	if err := s.PurgeBlob(ctx, dg(vl)); err != nil {
		t.Fatal(err)
	}

	gone := regtest.Sets{
		Tags:      regtest.Set{"app:v2": {}},
		Revisions: regtest.Set{"app@" + untaggedD.String(): {}},
		Layers:    regtest.Set{"other/copy@" + copyLayer.String(): {}},
		Blobs:     regtest.Set{vl.String(): {}},
	}
	after := storeSets(t, s)
	if got, want := before.Minus(after), gone.Minus(regtest.Sets{}); !slices.Equal(got, want) {
		t.Errorf("removed %v, want exactly %v", got, want)
	}
	if extra := after.Minus(before); len(extra) > 0 {
		t.Errorf("appeared: %v", extra)
	}

	// The API answers 404 for exactly the removed objects, 200 for the rest.
	for tag := range before.Tags {
		repo, name, _ := strings.Cut(tag, ":")
		want := http.StatusOK
		if gone.Tags.Has(tag) {
			want = http.StatusNotFound
		}
		if got := r.ManifestStatus(t, repo, name); got != want {
			t.Errorf("GET manifest %s: %d, want %d", tag, got, want)
		}
	}
	for rev := range before.Revisions {
		repo, d, _ := strings.Cut(rev, "@")
		want := http.StatusOK
		if gone.Revisions.Has(rev) {
			want = http.StatusNotFound
		}
		if got := r.ManifestStatus(t, repo, d); got != want {
			t.Errorf("GET manifest %s: %d, want %d", rev, got, want)
		}
	}
	for l := range before.Layers {
		repo, d, _ := strings.Cut(l, "@")
		h, err := v1.NewHash(d)
		if err != nil {
			t.Fatal(err)
		}
		want := http.StatusOK
		if gone.Layers.Has(l) || gone.Blobs.Has(d) {
			want = http.StatusNotFound
		}
		if got := r.BlobStatus(t, repo, h); got != want {
			t.Errorf("GET blob %s: %d, want %d", l, got, want)
		}
	}
	// Whole pulls: what lost nothing still pulls; what lost a part does not.
	for _, ref := range []string{"app:v1", "app@" + sharedD.String(), "multi/arch:idx", "app@" + art.Digest.String()} {
		r.Pull(t, ref)
	}
	for _, ref := range []string{"app:v2", "app@" + untaggedD.String(), "other/copy:v1", "a/b/c:victim"} {
		if err := r.TryPull(t, ref); err == nil {
			t.Errorf("pull of %s succeeded after its unlink", ref)
		}
	}

	// Restores bring the unlinked objects back, byte for byte as the registry writes them.
	if err := s.LinkTag(ctx, "app", "v2", dg(sharedD)); err != nil {
		t.Fatal(err)
	}
	if err := s.LinkRevision(ctx, "app", dg(untaggedD)); err != nil {
		t.Fatal(err)
	}
	if err := s.LinkLayer(ctx, "other/copy", dg(copyLayer)); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"app:v2", "app@" + untaggedD.String(), "other/copy:v1"} {
		r.Pull(t, ref)
	}
	restored, err := regtest.Present(r.Root)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := present.Minus(restored), []string{"blob " + vl.String()}; !slices.Equal(got, want) {
		t.Errorf("after restore, missing %v, want only the purged blob", got)
	}
}
