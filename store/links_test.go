package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestFilesystemLinksAgreeWithWalk: the filesystem's link directories read
// directly give what the driver's walk gives, strays of every kind
// included.
func TestFilesystemLinksAgreeWithWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newFS(t, root)
	walked := FromDriver(s.StorageDriver()) // no EmptyDirs: the driver's walk
	if walked.dirs != nil {
		t.Fatal("FromDriver has the filesystem's directories")
	}
	var revs []digest.Digest
	for i := range 40 {
		d := putBlob(t, s, fmt.Sprint("m", i))
		revs = append(revs, d)
		if err := s.LinkRevision(ctx, "r", d); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkLayer(ctx, "r", d); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.LinkTag(ctx, "r", "t", revs[0]); err != nil {
		t.Fatal(err)
	}
	dir, _ := revisionsDir("r")
	base := s.dirs.osPath(dir)
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(base, filepath.FromSlash(rel))
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(content), 0o644))
	}
	hex := func(i int) string { return revs[i].Encoded() }
	write("stray-file", "x")                                             // a file beside the algorithms
	write("sha256/stray-file", "x")                                      // a file beside the digests
	write("sha256/not-hex/link", "x")                                    // an invalid digest
	write("md5/"+hex(1)+"/link", "x")                                    // an unknown algorithm
	write("sha256/"+digest.FromString("no link").Encoded()+"/data", "x") // a digest without a link
	must(t, os.Remove(filepath.Join(base, "sha256", hex(2), "link")))
	must(t, os.MkdirAll(filepath.Join(base, "sha256", hex(2), "link", "deeper"), 0o755)) // link is a directory
	must(t, os.Remove(filepath.Join(base, "sha256", hex(3), "link")))                    // an empty digest directory
	other := t.TempDir()
	must(t, os.WriteFile(filepath.Join(other, "link"), []byte(revs[4]), 0o644))
	must(t, os.RemoveAll(filepath.Join(base, "sha256", hex(4))))
	must(t, os.Symlink(other, filepath.Join(base, "sha256", hex(4)))) // followed, as the driver does

	for _, tc := range []struct {
		name string
		walk func(s *Driver, fn func(digest.Digest) error) error
	}{
		{"revisions", func(s *Driver, fn func(digest.Digest) error) error { return s.Revisions(ctx, "r", fn) }},
		{"layers", func(s *Driver, fn func(digest.Digest) error) error { return s.LayerLinks(ctx, "r", fn) }},
		{"missing repository", func(s *Driver, fn func(digest.Digest) error) error { return s.Revisions(ctx, "none", fn) }},
		{"history", func(s *Driver, fn func(digest.Digest) error) error {
			ds, err := s.TagHistory(ctx, "r", "t")
			for _, d := range ds {
				if err == nil {
					err = fn(d)
				}
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got, want []digest.Digest
			errGot := tc.walk(s, func(d digest.Digest) error { got = append(got, d); return nil })
			errWant := tc.walk(walked, func(d digest.Digest) error { want = append(want, d); return nil })
			if (errGot == nil) != (errWant == nil) || !slices.Equal(got, want) {
				t.Fatalf("read directly: %d links (%v); walked: %d links (%v)\n%v\n%v", len(got), errGot, len(want), errWant, got, want)
			}
			if !slices.IsSorted(got) {
				t.Fatalf("not in digest order: %v", got)
			}
		})
	}
	if _, err := s.TagHistory(ctx, "r", "none"); err == nil {
		t.Fatal("history of a missing tag")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestScanNames: a directory's entries read into a small buffer, some of
// them removed first, are the entries os.ReadDir gives.
func TestScanNames(t *testing.T) {
	dir := t.TempDir()
	for i := range 1000 {
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("entry-%04d-%s", i, digest.FromString(fmt.Sprint(i)).Encoded())), nil, 0o644))
	}
	entries, err := os.ReadDir(dir)
	must(t, err)
	for i, e := range entries {
		if i%3 == 0 {
			must(t, os.Remove(filepath.Join(dir, e.Name())))
		}
	}
	entries, err = os.ReadDir(dir)
	must(t, err)
	var want, got []string
	for _, e := range entries {
		want = append(want, e.Name())
	}
	must(t, scanNames(context.Background(), dir, make([]byte, 1024), func(name []byte) { got = append(got, string(name)) }))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("scanned %d names, want %d", len(got), len(want))
	}
	must(t, scanNames(context.Background(), filepath.Join(dir, "missing"), make([]byte, 1024), func([]byte) { t.Fatal("an entry of a missing directory") }))
}
