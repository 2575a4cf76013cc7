package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/store"
)

// layoutDirs creates directories (and files, for names ending in a "*")
// under the layout root, all with the modification time at.
func layoutDirs(t *testing.T, root string, at time.Time, paths ...string) {
	t.Helper()
	base := filepath.Join(root, filepath.FromSlash(store.Root))
	for _, p := range paths {
		full := filepath.Join(base, filepath.FromSlash(strings.TrimSuffix(p, "*")))
		if strings.HasSuffix(p, "*") {
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		} else if err := os.MkdirAll(full, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Times last, deepest first, so that creating children does not move them.
	var all []string
	_ = filepath.Walk(base, func(p string, _ os.FileInfo, _ error) error { all = append(all, p); return nil })
	for i := len(all) - 1; i >= 0; i-- {
		if err := os.Chtimes(all[i], at, at); err != nil {
			t.Fatal(err)
		}
	}
}

func exists(root, p string) bool {
	_, err := os.Lstat(filepath.Join(root, filepath.FromSlash(store.Root), filepath.FromSlash(p)))
	return err == nil
}

func TestEmptyDirs(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	old, recent := now.Add(-2*time.Hour), now.Add(-time.Minute)
	before := now.Add(-time.Hour) // the grace
	hexA := strings.Repeat("ab", 32)
	dA := digest.NewDigestFromEncoded(digest.SHA256, hexA)
	open := func(t *testing.T, hook func(string)) (string, *store.EmptyDirs) {
		t.Helper()
		root := t.TempDir()
		var opts []store.Option
		if hook != nil {
			opts = append(opts, store.WithRmdirHook(hook))
		}
		st, err := store.New(ctx, "filesystem", map[string]any{"rootdirectory": root}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return root, st.EmptyDirs()
	}
	emptyRepo := []string{
		"repositories/ns/app/_manifests/tags",
		"repositories/ns/app/_manifests/revisions/sha256/" + hexA,
		"repositories/ns/app/_layers/sha256/" + hexA,
		"repositories/ns/app/_uploads",
	}

	t.Run("an empty repository goes whole, with its empty namespace", func(t *testing.T) {
		root, ed := open(t, nil)
		layoutDirs(t, root, old, append(emptyRepo, "repositories/other/_layers/sha256/"+hexA+"/link*")...)
		n, pending, err := ed.PruneRepository(ctx, "ns/app", before)
		if err != nil || pending || n != 11 {
			t.Fatalf("removed %d, pending %v, err %v; want 11 directories", n, pending, err)
		}
		if exists(root, "repositories/ns") || !exists(root, "repositories/other/_layers/sha256/"+hexA+"/link") {
			t.Error("wrong directories removed")
		}
	})
	t.Run("recent directories stay, pending", func(t *testing.T) {
		root, ed := open(t, nil)
		layoutDirs(t, root, old, emptyRepo...)
		fresh := filepath.Join(root, filepath.FromSlash(store.Root), "repositories/ns/app/_layers/sha256", hexA)
		if err := os.Chtimes(fresh, recent, recent); err != nil {
			t.Fatal(err)
		}
		n, pending, err := ed.PruneRepository(ctx, "ns/app", before)
		if err != nil || !pending {
			t.Fatalf("removed %d, pending %v, err %v; want pending", n, pending, err)
		}
		if !exists(root, "repositories/ns/app/_layers/sha256/"+hexA) || exists(root, "repositories/ns/app/_manifests") {
			t.Error("want the recent branch kept and the old one removed")
		}
	})
	t.Run("files, uploads and nested repositories stay, not pending", func(t *testing.T) {
		root, ed := open(t, nil)
		layoutDirs(t, root, old,
			"repositories/app/_manifests/revisions/sha256/"+hexA+"/link*",
			"repositories/app/_manifests/tags",
			"repositories/app/_uploads/0c1d/startedat*",
			"repositories/app/_uploads/0c1e",
			"repositories/app/sub/_manifests/tags")
		n, pending, err := ed.PruneRepository(ctx, "app", before)
		if err != nil || pending || n != 1 {
			t.Fatalf("removed %d, pending %v, err %v; want only _manifests/tags", n, pending, err)
		}
		for _, p := range []string{"repositories/app/_manifests/revisions/sha256/" + hexA + "/link",
			"repositories/app/_uploads/0c1e", "repositories/app/sub/_manifests/tags"} {
			if !exists(root, p) {
				t.Errorf("%s removed", p)
			}
		}
	})
	t.Run("a write landing before the rmdir keeps the directory and the write", func(t *testing.T) {
		landed := false
		root, ed := open(t, func(dir string) {
			// The registry's create, racing the removal: rmdir must fail.
			if !landed && strings.HasSuffix(dir, filepath.FromSlash("_layers/sha256/"+hexA)) {
				landed = true
				if err := os.WriteFile(filepath.Join(dir, "link"), []byte(dA), 0o644); err != nil {
					t.Error(err)
				}
			}
		})
		layoutDirs(t, root, old, emptyRepo...)
		_, pending, err := ed.PruneRepository(ctx, "ns/app", before)
		if err != nil || !pending {
			t.Fatalf("pending %v, err %v; want pending", pending, err)
		}
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(store.Root), "repositories/ns/app/_layers/sha256", hexA, "link"))
		if err != nil || string(b) != string(dA) {
			t.Fatalf("the racing write: %q %v", b, err)
		}
	})
	t.Run("a purged blob's prefix goes when empty, not while shared", func(t *testing.T) {
		root, ed := open(t, nil)
		other := "ab" + strings.Repeat("cd", 31)
		layoutDirs(t, root, old, "blobs/sha256/ab/"+hexA, "blobs/sha256/ab/"+other+"/data*", "blobs/sha256/cd")
		if n, pending, err := ed.PruneBlob(ctx, dA, before); err != nil || pending || n != 1 {
			t.Fatalf("removed %d, pending %v, err %v; want the blob's own directory", n, pending, err)
		}
		if err := os.RemoveAll(filepath.Join(root, filepath.FromSlash(store.Root), "blobs/sha256/ab", other)); err != nil {
			t.Fatal(err)
		}
		// The purge just touched the prefix: it waits for the grace.
		if n, pending, err := ed.PruneBlob(ctx, dA, before); err != nil || !pending || n != 0 {
			t.Fatalf("removed %d, pending %v, err %v; want pending", n, pending, err)
		}
		if n, pending, err := ed.PruneBlob(ctx, dA, now.Add(time.Hour)); err != nil || pending || n != 1 {
			t.Fatalf("removed %d, pending %v, err %v; want the prefix", n, pending, err)
		}
		if !exists(root, "blobs/sha256/cd") {
			t.Error("another prefix removed")
		}
	})
	t.Run("object stores have no directories", func(t *testing.T) {
		st := store.FromDriver(nil)
		if st.EmptyDirs() != nil {
			t.Error("a driver of unknown layout has EmptyDirs")
		}
	})
}
