package store

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// TestRemoveObjectAgreesWithDriver: the store's own removal of a layer link
// and of a blob leaves the filesystem as the driver's Delete does, in the
// layout's plain case and in every case it hands back to the driver, and
// never reaches through a symbolic link.
func TestRemoveObjectAgreesWithDriver(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		alone bool // the store's removal needs no fallback to the driver
		// setup changes the object's directory (in OS form); outside is a
		// directory beside the layout.
		setup func(t *testing.T, dir, file, outside string)
	}{
		{"as the registry wrote it", true, func(*testing.T, string, string, string) {}},
		{"already gone", false, func(t *testing.T, dir, _, _ string) { must(t, os.RemoveAll(dir)) }},
		{"its file gone", true, func(t *testing.T, dir, file, _ string) { must(t, os.Remove(filepath.Join(dir, file))) }},
		{"another file beside it", false, func(t *testing.T, dir, _, _ string) {
			must(t, os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644))
		}},
		{"another file instead", false, func(t *testing.T, dir, file, _ string) {
			must(t, os.Remove(filepath.Join(dir, file)))
			must(t, os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644))
		}},
		{"its file a directory", false, func(t *testing.T, dir, file, _ string) {
			must(t, os.Remove(filepath.Join(dir, file)))
			must(t, os.MkdirAll(filepath.Join(dir, file, "deeper"), 0o755))
		}},
		{"its file a symbolic link", true, func(t *testing.T, dir, file, outside string) {
			must(t, os.Remove(filepath.Join(dir, file)))
			must(t, os.Symlink(filepath.Join(outside, "kept"), filepath.Join(dir, file)))
		}},
		{"the directory a file", false, func(t *testing.T, dir, _, _ string) {
			must(t, os.RemoveAll(dir))
			must(t, os.WriteFile(dir, []byte("x"), 0o644))
		}},
		{"the directory a symbolic link", false, func(t *testing.T, dir, file, outside string) {
			must(t, os.RemoveAll(dir))
			must(t, os.WriteFile(filepath.Join(outside, file), []byte("x"), 0o644))
			must(t, os.Symlink(outside, dir))
		}},
	} {
		for _, obj := range []struct {
			kind   string
			file   string
			remove func(s *Driver, d digest.Digest) error
			dir    func(d digest.Digest) (string, error)
		}{
			{"layer link", linkFile,
				func(s *Driver, d digest.Digest) error { return s.DeleteLayerLink(ctx, "r", d) },
				func(d digest.Digest) (string, error) { return layerDir("r", d) }},
			{"blob", dataFile,
				func(s *Driver, d digest.Digest) error { return s.PurgeBlob(ctx, d) },
				blobDir},
		} {
			t.Run(obj.kind+"/"+tc.name, func(t *testing.T) {
				// world builds the same storage for the store's removal and
				// for the driver's, and returns what is left after it.
				var deletes int
				world := func(direct bool) ([]string, error) {
					top := t.TempDir()
					root, outside := filepath.Join(top, "root"), filepath.Join(top, "outside")
					must(t, os.Mkdir(outside, 0o755))
					must(t, os.WriteFile(filepath.Join(outside, "kept"), []byte("x"), 0o644))
					s := newFS(t, root)
					d := putBlob(t, s, "layer")
					must(t, s.LinkLayer(ctx, "r", d))
					p, err := obj.dir(d)
					must(t, err)
					tc.setup(t, s.dirs.osPath(p), obj.file, outside)
					if direct {
						s.d = countDeletes{s.d, &deletes}
					} else {
						s = FromDriver(s.StorageDriver())
					}
					err = obj.remove(s, d)
					return tree(t, top), err
				}
				got, errGot := world(true)
				want, errWant := world(false)
				if (errGot == nil) != (errWant == nil) || !slices.Equal(got, want) {
					t.Errorf("store's removal left %q (err %v); the driver's %q (err %v)", got, errGot, want, errWant)
				}
				if tc.alone != (deletes == 0) {
					t.Errorf("the driver's Delete called %d times, want it called: %v", deletes, !tc.alone)
				}
				if !slices.Contains(got, "outside/kept") {
					t.Errorf("a file beside the layout was removed: %q", got)
				}
			})
		}
	}
}

// countDeletes counts the calls of the driver's Delete.
type countDeletes struct {
	storagedriver.StorageDriver
	n *int
}

func (c countDeletes) Delete(ctx context.Context, p string) error {
	*c.n++
	return c.StorageDriver.Delete(ctx, p)
}

// tree lists every path under top, relative, directories with a trailing
// slash.
func tree(t *testing.T, top string) []string {
	t.Helper()
	var out []string
	must(t, filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == top {
			return err
		}
		rel, _ := filepath.Rel(top, p)
		if e.IsDir() {
			rel += "/"
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	}))
	return out
}

// TestEmptyDirsRootAsTheDriver: the store's filesystem root is the one the
// driver uses, an empty rootdirectory included (the driver then writes
// under /docker/registry/v2): a removal looking elsewhere would find
// nothing there and report it gone.
func TestEmptyDirsRootAsTheDriver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params map[string]any
		want   string
	}{
		{"unset", map[string]any{}, filepath.Join(defaultFilesystemRoot, Root)},
		{"empty", map[string]any{"rootdirectory": ""}, filepath.FromSlash(Root)},
		{"set", map[string]any{"rootdirectory": "/srv/registry"}, filepath.Join("/srv/registry", Root)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := newEmptyDirs(tc.params, nil).root; got != tc.want {
				t.Errorf("root %q, want %q", got, tc.want)
			}
		})
	}
}
