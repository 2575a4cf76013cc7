package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/internal/regtest"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// TestRefusesUnsafeNames calls every method with names and digests that
// could escape the layout and checks each is refused with ErrInvalid before
// any driver call, and that nothing was written anywhere.
func TestRefusesUnsafeNames(t *testing.T) {
	outer := t.TempDir()
	root := filepath.Join(outer, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	fs := newFS(t, root)
	cd := &regtest.CountingDriver{StorageDriver: fs.StorageDriver()}
	s := FromDriver(cd)
	ctx := context.Background()
	good := digest.Digest("sha256:" + hexA)

	badRepos := []string{"../x", "a/../../b", "/abs", "a\x00b", "Upper", "a//b", "a/", ".", "..", "a/./b", "_layers", "a/_manifests", ""}
	badTags := []string{"../x", "a/b", "/abs", "a\x00b", ".hidden", "-x", "", strings.Repeat("t", 129)}
	badDigests := []digest.Digest{"sha256:../../x", digest.Digest("sha256:" + hexA[:63]), digest.Digest("sha256:" + strings.ToUpper(hexA)),
		digest.Digest("sha256:" + hexA + "/.."), "md5:d41d8cd98f00b204e9800998ecf8427e", digest.Digest("../sha256:" + hexA), "", digest.Digest("sha256:" + hexA + "\x00")}

	type call struct {
		name string
		fn   func() error
	}
	var calls []call
	for _, r := range badRepos {
		calls = append(calls,
			call{"DeleteTag repo " + r, func() error { return s.DeleteTag(ctx, r, "t") }},
			call{"DeleteRevision repo " + r, func() error { return s.DeleteRevision(ctx, r, good, nil) }},
			call{"DeleteLayerLink repo " + r, func() error { return s.DeleteLayerLink(ctx, r, good) }},
			call{"DeleteRepository " + r, func() error { return s.DeleteRepository(ctx, r) }},
			call{"LinkTag repo " + r, func() error { return s.LinkTag(ctx, r, "t", good) }},
			call{"LinkRevision repo " + r, func() error { return s.LinkRevision(ctx, r, good) }},
			call{"LinkLayer repo " + r, func() error { return s.LinkLayer(ctx, r, good) }},
			call{"Tags " + r, func() error { return s.Tags(ctx, r, func(string, digest.Digest) error { return nil }) }},
			call{"TagHistory repo " + r, func() error { _, err := s.TagHistory(ctx, r, "t"); return err }},
			call{"Revisions " + r, func() error { return s.Revisions(ctx, r, func(digest.Digest) error { return nil }) }},
			call{"LayerLinks " + r, func() error { return s.LayerLinks(ctx, r, func(digest.Digest) error { return nil }) }},
		)
	}
	for _, tag := range badTags {
		calls = append(calls,
			call{"DeleteTag tag " + tag, func() error { return s.DeleteTag(ctx, "a", tag) }},
			call{"DeleteRevision tag " + tag, func() error { return s.DeleteRevision(ctx, "a", good, []string{"ok", tag}) }},
			call{"LinkTag tag " + tag, func() error { return s.LinkTag(ctx, "a", tag, good) }},
			call{"TagHistory tag " + tag, func() error { _, err := s.TagHistory(ctx, "a", tag); return err }},
		)
	}
	for _, d := range badDigests {
		calls = append(calls,
			call{"DeleteRevision digest " + string(d), func() error { return s.DeleteRevision(ctx, "a", d, []string{"t"}) }},
			call{"DeleteLayerLink digest " + string(d), func() error { return s.DeleteLayerLink(ctx, "a", d) }},
			call{"PurgeBlob digest " + string(d), func() error { return s.PurgeBlob(ctx, d) }},
			call{"LinkTag digest " + string(d), func() error { return s.LinkTag(ctx, "a", "t", d) }},
			call{"LinkRevision digest " + string(d), func() error { return s.LinkRevision(ctx, "a", d) }},
			call{"LinkLayer digest " + string(d), func() error { return s.LinkLayer(ctx, "a", d) }},
			call{"StatBlob digest " + string(d), func() error { _, err := s.StatBlob(ctx, d); return err }},
			call{"ReadBlob digest " + string(d), func() error { _, err := s.ReadBlob(ctx, d, 100); return err }},
		)
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			before := cd.Ops.Load()
			err := c.fn()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if n := cd.Ops.Load() - before; n != 0 {
				t.Fatalf("%d driver calls before refusing", n)
			}
		})
	}
	// Nothing was created, inside the root or next to it.
	for _, dir := range []string{outer, root} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if dir == outer {
			want = 1 // root itself
		}
		if len(ents) != want {
			t.Errorf("%s holds %d entries, want %d", dir, len(ents), want)
		}
	}
}

// TestPaths pins the layout to Distribution v3.1.2's.
func TestPaths(t *testing.T) {
	d := digest.Digest("sha256:" + hexA)
	must := func(p string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	const r = "/docker/registry/v2/repositories/a/b-c/d_e"
	for _, tc := range []struct{ got, want string }{
		{must(tagDir("a/b-c/d_e", "v1.0")), r + "/_manifests/tags/v1.0"},
		{must(tagCurrentLink("a/b-c/d_e", "v1.0")), r + "/_manifests/tags/v1.0/current/link"},
		{must(tagIndexEntryDir("a/b-c/d_e", "v1.0", d)), r + "/_manifests/tags/v1.0/index/sha256/" + hexA},
		{must(revisionDir("a/b-c/d_e", d)), r + "/_manifests/revisions/sha256/" + hexA},
		{must(layerDir("a/b-c/d_e", d)), r + "/_layers/sha256/" + hexA},
		{must(blobDir(d)), "/docker/registry/v2/blobs/sha256/aa/" + hexA},
		{must(blobDataPath(d)), "/docker/registry/v2/blobs/sha256/aa/" + hexA + "/data"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
	for _, p := range []string{"/docker/registry/v2/../x", "/docker/registry/v2/a/./b", "/docker/registry/v2x/a", "/etc/passwd", "/docker/registry/v2/a b"} {
		if _, err := safe(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("safe(%q) = %v, want ErrInvalid", p, err)
		}
	}
}
