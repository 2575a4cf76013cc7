package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the driver these tests use
	"github.com/opencontainers/go-digest"
	yamlv2 "go.yaml.in/yaml/v2"
	yamlv4 "go.yaml.in/yaml/v4"
)

func newFS(t testing.TB, root string) *Driver {
	t.Helper()
	s, err := New(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// putBlob writes blob data as the registry does and returns its digest.
func putBlob(t testing.TB, s *Driver, content string) digest.Digest {
	t.Helper()
	d := digest.FromString(content)
	p, err := blobDataPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StorageDriver().PutContent(context.Background(), p, []byte(content)); err != nil {
		t.Fatal(err)
	}
	return d
}

func collect(t testing.TB, walk func(fn func(d digest.Digest) error) error) []digest.Digest {
	t.Helper()
	var out []digest.Digest
	if err := walk(func(d digest.Digest) error { out = append(out, d); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func repos(t testing.TB, s *Driver) []string {
	t.Helper()
	var out []string
	if err := s.Repositories(context.Background(), func(r string) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func tags(t testing.TB, s *Driver, repo string) map[string]digest.Digest {
	t.Helper()
	out := map[string]digest.Digest{}
	if err := s.Tags(context.Background(), repo, func(tag string, d digest.Digest) error { out[tag] = d; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sorted(ds ...digest.Digest) []digest.Digest {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds
}

func TestLinksAndWalks(t *testing.T) { forEachBackend(t, testLinksAndWalks) }

func testLinksAndWalks(t *testing.T, s *Driver) {
	ctx := context.Background()

	if got := repos(t, s); len(got) != 0 {
		t.Fatalf("empty storage has repositories %v", got)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.Blobs(ctx, fn) }); len(got) != 0 {
		t.Fatalf("empty storage has blobs %v", got)
	}

	m1, m2 := putBlob(t, s, `{"manifest":1}`), putBlob(t, s, `{"manifest":2}`)
	l1, l2 := putBlob(t, s, "layer1"), putBlob(t, s, "layer2")
	orphan := putBlob(t, s, "orphan")

	for _, repo := range []string{"a", "a/b", "a/b/c", "x/y"} {
		for _, d := range []digest.Digest{m1, m2} {
			if err := s.LinkRevision(ctx, repo, d); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []digest.Digest{l1, l2} {
			if err := s.LinkLayer(ctx, repo, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.LinkTag(ctx, repo, "v1", m1); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkTag(ctx, repo, "latest", m1); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkTag(ctx, repo, "latest", m2); err != nil {
			t.Fatal(err)
		}
	}
	// Restores are idempotent.
	if err := s.LinkTag(ctx, "a", "latest", m2); err != nil {
		t.Fatal(err)
	}

	// Link files are exactly what Distribution writes.
	b, err := s.StorageDriver().GetContent(ctx, "/docker/registry/v2/repositories/a/b/_manifests/tags/latest/current/link")
	if err != nil || string(b) != m2.String() {
		t.Fatalf("current link %q, %v", b, err)
	}
	for _, p := range []string{
		"repositories/a/_layers/sha256/" + l1.Encoded() + "/link",
		"repositories/a/_manifests/revisions/sha256/" + m1.Encoded() + "/link",
		"repositories/a/_manifests/tags/latest/index/sha256/" + m1.Encoded() + "/link",
	} {
		if _, err := s.StorageDriver().Stat(ctx, "/docker/registry/v2/"+p); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}

	if got, want := repos(t, s), []string{"a", "a/b", "a/b/c", "x/y"}; !slices.Equal(got, want) {
		t.Fatalf("repositories %v, want %v", got, want)
	}
	if got := tags(t, s, "a/b"); len(got) != 2 || got["v1"] != m1 || got["latest"] != m2 {
		t.Fatalf("tags %v", got)
	}
	h, err := s.TagHistory(ctx, "a/b", "latest")
	if err != nil || !slices.Equal(h, sorted(m1, m2)) {
		t.Fatalf("history %v, %v", h, err)
	}
	if _, err := s.TagHistory(ctx, "a/b", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("history of a missing tag: %v", err)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.Revisions(ctx, "a/b/c", fn) }); !slices.Equal(got, sorted(m1, m2)) {
		t.Fatalf("revisions %v", got)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.LayerLinks(ctx, "x/y", fn) }); !slices.Equal(got, sorted(l1, l2)) {
		t.Fatalf("layer links %v", got)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.Blobs(ctx, fn) }); !slices.Equal(got, sorted(m1, m2, l1, l2, orphan)) {
		t.Fatalf("blobs %v", got)
	}
	// BlobSpans: each prefix directory covered once, its digests in order.
	if got, _ := spans(t, s); !slices.Equal(got, sorted(m1, m2, l1, l2, orphan)) {
		t.Fatalf("blob spans %v", got)
	}
	if n, err := s.StatBlob(ctx, l1); err != nil || n != int64(len("layer1")) {
		t.Fatalf("stat %d, %v", n, err)
	}
	if b, err := s.ReadBlob(ctx, m1, 100); err != nil || string(b) != `{"manifest":1}` {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := s.ReadBlob(ctx, m1, 5); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("read over the limit: %v", err)
	}

	// Unlinks, each twice (idempotent).
	for range 2 {
		if err := s.DeleteTag(ctx, "a/b", "v1"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRevision(ctx, "a/b", m1, []string{"latest", "v1", "latest", "never"}); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteLayerLink(ctx, "a/b", l1); err != nil {
			t.Fatal(err)
		}
		if err := s.PurgeBlob(ctx, orphan); err != nil {
			t.Fatal(err)
		}
	}
	if got := tags(t, s, "a/b"); len(got) != 1 || got["latest"] != m2 {
		t.Fatalf("tags after delete %v", got)
	}
	if h, _ := s.TagHistory(ctx, "a/b", "latest"); !slices.Equal(h, []digest.Digest{m2}) {
		t.Fatalf("history after revision delete %v", h)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.Revisions(ctx, "a/b", fn) }); !slices.Equal(got, []digest.Digest{m2}) {
		t.Fatalf("revisions after delete %v", got)
	}
	if got := collect(t, func(fn func(digest.Digest) error) error { return s.LayerLinks(ctx, "a/b", fn) }); !slices.Equal(got, []digest.Digest{l2}) {
		t.Fatalf("layer links after delete %v", got)
	}
	if _, err := s.StatBlob(ctx, orphan); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stat purged: %v", err)
	}
	if _, err := s.ReadBlob(ctx, orphan, 100); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read purged: %v", err)
	}
	// The other repositories are untouched.
	if got := tags(t, s, "a"); len(got) != 2 {
		t.Fatalf("tags of a: %v", got)
	}
	// Restores refuse links to purged data.
	for name, err := range map[string]error{
		"tag":      s.LinkTag(ctx, "a", "t", orphan),
		"revision": s.LinkRevision(ctx, "a", orphan),
		"layer":    s.LinkLayer(ctx, "a", orphan),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("restore %s of purged data: %v", name, err)
		}
	}

	// DeleteRepository refuses a repository that holds anything.
	if err := s.DeleteRepository(ctx, "a/b"); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("delete non-empty repository: %v", err)
	}
	for _, step := range []func() error{
		func() error { return s.DeleteTag(ctx, "a/b", "latest") },
		func() error { return s.DeleteRevision(ctx, "a/b", m2, nil) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRepository(ctx, "a/b"); !errors.Is(err, ErrNotEmpty) {
			t.Fatalf("delete non-empty repository: %v", err)
		}
	}
	if err := s.DeleteLayerLink(ctx, "a/b", l2); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.DeleteRepository(ctx, "a/b"); err != nil {
			t.Fatalf("delete empty repository: %v", err)
		}
	}
	if got, want := repos(t, s), []string{"a", "a/b/c", "x/y"}; !slices.Equal(got, want) {
		t.Fatalf("repositories after delete %v, want %v", got, want)
	}
	if got := tags(t, s, "a/b/c"); len(got) != 2 {
		t.Fatalf("nested repository lost tags: %v", got)
	}
	if err := s.DeleteRepository(ctx, "never/was"); err != nil {
		t.Fatalf("delete absent repository: %v", err)
	}
}

func TestUploadsKeepRepository(t *testing.T) { forEachBackend(t, testUploadsKeepRepository) }

func testUploadsKeepRepository(t *testing.T, s *Driver) {
	ctx := context.Background()
	p, _ := repoPath("up", "_uploads", "0123", "startedat")
	if err := s.StorageDriver().PutContent(ctx, p, []byte("x")); err != nil {
		t.Fatal(err)
	}
	p, _ = repoPath("up", "_manifests", "tags")
	if err := s.StorageDriver().PutContent(ctx, p+"/stale/index/sha256/"+hexA+"/link", []byte("sha256:"+hexA)); err != nil {
		t.Fatal(err)
	}
	if got := tags(t, s, "up"); len(got) != 0 {
		t.Fatalf("a tag without current link is reported: %v", got)
	}
	if err := s.DeleteRepository(ctx, "up"); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("repository with an upload: %v", err)
	}
}

func TestWalkErrors(t *testing.T) { forEachBackend(t, testWalkErrors) }

func testWalkErrors(t *testing.T, s *Driver) {
	ctx := context.Background()
	var ds []digest.Digest
	for i := range 40 {
		d := putBlob(t, s, fmt.Sprint("blob", i))
		ds = append(ds, d)
		if err := s.LinkLayer(ctx, "r", d); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkRevision(ctx, fmt.Sprintf("r/n%d", i), d); err != nil {
			t.Fatal(err)
		}
		if err := s.LinkTag(ctx, "r", fmt.Sprint("t", i), d); err != nil {
			t.Fatal(err)
		}
	}
	stop := errors.New("stop here")
	walks := map[string]func(fn func() error) error{
		"Repositories": func(fn func() error) error {
			return s.Repositories(ctx, func(string) error { return fn() })
		},
		"Tags": func(fn func() error) error {
			return s.Tags(ctx, "r", func(string, digest.Digest) error { return fn() })
		},
		"LayerLinks": func(fn func() error) error {
			return s.LayerLinks(ctx, "r", func(digest.Digest) error { return fn() })
		},
		"Blobs": func(fn func() error) error {
			return s.Blobs(ctx, func(digest.Digest) error { return fn() })
		},
	}
	for name, walk := range walks {
		t.Run(name+"/stops", func(t *testing.T) {
			calls := 0
			err := walk(func() error { calls++; return stop })
			if err != stop {
				t.Fatalf("got %v, want the callback's error as is", err)
			}
			if calls != 1 {
				t.Fatalf("callback called %d times after an error", calls)
			}
		})
		t.Run(name+"/serial", func(t *testing.T) {
			// Unsynchronized counting: the race detector fails this if
			// callbacks ever run concurrently.
			n := 0
			if err := walk(func() error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if n < 40 {
				t.Fatalf("%d callbacks, want at least 40", n)
			}
		})
	}
	t.Run("canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Blobs(cctx, func(digest.Digest) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				got := collect(t, func(fn func(digest.Digest) error) error { return s.Blobs(ctx, fn) })
				if len(got) != len(ds) {
					t.Errorf("%d blobs, want %d", len(got), len(ds))
				}
			})
		}
		wg.Wait()
	})
	t.Run("corrupt link", func(t *testing.T) {
		p, _ := tagCurrentLink("r", "t0")
		if err := s.StorageDriver().PutContent(ctx, p, []byte("sha256:../../etc")); err != nil {
			t.Fatal(err)
		}
		err := s.Tags(ctx, "r", func(string, digest.Digest) error { return nil })
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("got %v, want ErrCorrupt", err)
		}
	})
}

func TestFromConfig(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	doc := fmt.Sprintf(`
filesystem:
  rootdirectory: %s
  maxthreads: 50
delete:
  enabled: true
maintenance:
  uploadpurging:
    enabled: false
cache:
  blobdescriptor: inmemory
redirect:
  disable: true
tag:
  concurrencylimit: 5
`, root)
	var v3 map[string]any
	if err := yamlv4.Unmarshal([]byte(doc), &v3); err != nil {
		t.Fatal(err)
	}
	var v2 map[string]any
	if err := yamlv2.Unmarshal([]byte(doc), &v2); err != nil {
		t.Fatal(err)
	}
	for name, section := range map[string]map[string]any{"yaml.v4": v3, "yaml.v2": v2} {
		t.Run(name, func(t *testing.T) {
			s, err := FromConfig(ctx, section)
			if err != nil {
				t.Fatal(err)
			}
			if s.StorageDriver().Name() != "filesystem" {
				t.Fatalf("driver %s", s.StorageDriver().Name())
			}
			d := putBlob(t, s, "via config")
			if _, err := os.Stat(filepath.Join(root, "docker/registry/v2/blobs/sha256", d.Encoded()[:2], d.Encoded(), "data")); err != nil {
				t.Fatal(err)
			}
		})
	}
	for name, section := range map[string]map[string]any{
		"none":          {"delete": map[string]any{"enabled": true}},
		"two":           {"filesystem": nil, "s3": nil},
		"scalar params": {"filesystem": "x"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := FromConfig(ctx, section); !errors.Is(err, ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
		})
	}
	if _, err := FromConfig(ctx, map[string]any{"nosuchdriver": nil}); err == nil {
		t.Fatal("unknown driver accepted")
	}
}

// vanishingDriver deletes a directory right before listing it, as an
// unlink running beside a walk does between the walk's stat of the
// directory and its listing.
type vanishingDriver struct {
	storagedriver.StorageDriver
	gone map[string]bool // directories to delete when listed
	// late are deleted after their opening: the listing fails as the
	// filesystem driver's does then, with a driver error around ENOENT.
	late map[string]bool
}

func (v vanishingDriver) List(ctx context.Context, p string) ([]string, error) {
	if v.gone[p] || v.late[p] {
		if err := v.StorageDriver.Delete(ctx, p); err != nil {
			return nil, err
		}
	}
	if v.late[p] {
		return nil, storagedriver.Error{DriverName: "filesystem",
			Detail: &fs.PathError{Op: "readdirent", Path: "/root" + p, Err: syscall.ENOENT}}
	}
	return v.StorageDriver.List(ctx, p)
}

// Walk is the filesystem driver's walk (the fallback) over List above.
func (v vanishingDriver) Walk(ctx context.Context, p string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	return storagedriver.WalkFallback(ctx, v, p, f, opts...)
}

// TestWalkPastVanishedDirectories: revisions unlinked while the storage
// check lists the repository do not hide the revisions after them.
func TestWalkPastVanishedDirectories(t *testing.T) {
	ctx := context.Background()
	base := newFS(t, t.TempDir())
	var ds []digest.Digest
	for i := range 30 {
		d := putBlob(t, base, fmt.Sprint("manifest", i))
		ds = append(ds, d)
		if err := base.LinkRevision(ctx, "r", d); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(ds)
	gone, late := map[string]bool{}, map[string]bool{}
	var wantTags []string
	for i, d := range ds[:10] {
		tag := fmt.Sprint("t", i)
		if err := base.LinkTag(ctx, "r", tag, d); err != nil {
			t.Fatal(err)
		}
		if p, _ := tagDir("r", tag); i%4 == 1 {
			gone[p] = true
		} else {
			wantTags = append(wantTags, tag)
		}
	}
	var want []digest.Digest
	for i, d := range ds {
		if i%7 == 3 || i == 0 || i == len(ds)-1 {
			p, _ := revisionDir("r", d)
			gone[p] = true
			continue
		}
		if i%7 == 5 {
			p, _ := revisionDir("r", d)
			late[p] = true
			continue
		}
		want = append(want, d)
	}
	s := FromDriver(vanishingDriver{StorageDriver: base.StorageDriver(), gone: gone, late: late})
	got := collect(t, func(fn func(digest.Digest) error) error { return s.Revisions(ctx, "r", fn) })
	if !slices.Equal(got, want) {
		t.Fatalf("walk listed %d revisions, want the %d left: %v", len(got), len(want), got)
	}
	var gotTags []string
	err := s.TagIndex(ctx, "r", func(tag string, current bool, history []digest.Digest) error {
		if current && len(history) == 1 {
			gotTags = append(gotTags, tag)
		}
		return nil
	})
	if err != nil || !slices.Equal(gotTags, wantTags) {
		t.Fatalf("tag index listed %v (%v), want %v", gotTags, err, wantTags)
	}
}
