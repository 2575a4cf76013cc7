package store

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

// deadDir returns a path that opens to a directory removed after it was
// opened: what a directory removed (EmptyDirs, an operator) between the
// open and the read of a listing looks like. getdents64 on it fails with
// ENOENT.
func deadDir(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("no /proc/self/fd")
	}
	dir := filepath.Join(t.TempDir(), "dead")
	must(t, os.Mkdir(dir, 0o755))
	f, err := os.Open(dir)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	must(t, os.Remove(dir))
	return fmt.Sprintf("/proc/self/fd/%d", f.Fd())
}

// TestFilesystemLinksEdgeCases: the link directories read directly agree
// with the driver's walk in the cases the walk passes over or reports, and
// never give an error that callers take for "nothing there"
// (errors.Is(err, fs.ErrNotExist): the storage check and the reconciler's
// confirmation treat it so) where the walk lists links.
func TestFilesystemLinksEdgeCases(t *testing.T) {
	ctx := context.Background()
	sum := sha512.Sum512([]byte("m512"))
	d512 := digest.NewDigestFromEncoded(digest.SHA512, fmt.Sprintf("%x", sum))
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, base string) // base: the revisions directory, in OS form
	}{
		{"sha256 directory removed while read, sha512 after it", func(t *testing.T, base string) {
			must(t, os.RemoveAll(filepath.Join(base, "sha256")))
			must(t, os.Symlink(deadDir(t), filepath.Join(base, "sha256")))
		}},
		{"revisions directory removed while read", func(t *testing.T, base string) {
			must(t, os.RemoveAll(base))
			must(t, os.Symlink(deadDir(t), base))
		}},
		{"revisions directory is a file", func(t *testing.T, base string) {
			must(t, os.RemoveAll(base))
			must(t, os.WriteFile(base, []byte("x"), 0o644))
		}},
		{"digest directory is a file", func(t *testing.T, base string) {
			p := filepath.Join(base, "sha256", digest.FromString("file").Encoded())
			must(t, os.MkdirAll(filepath.Dir(p), 0o755))
			must(t, os.WriteFile(p, []byte("x"), 0o644))
		}},
		{"link is a dangling symlink", func(t *testing.T, base string) {
			p := filepath.Join(base, "sha256", digest.FromString("dangling").Encoded())
			must(t, os.MkdirAll(p, 0o755))
			must(t, os.Symlink(filepath.Join(p, "nowhere"), filepath.Join(p, "link")))
		}},
		{"link is a symlink loop", func(t *testing.T, base string) {
			p := filepath.Join(base, "sha256", digest.FromString("loop").Encoded())
			must(t, os.MkdirAll(p, 0o755))
			must(t, os.Symlink(filepath.Join(p, "link"), filepath.Join(p, "link")))
		}},
		{"link is a fifo", func(t *testing.T, base string) {
			d := digest.FromString("fifo")
			p := filepath.Join(base, "sha256", d.Encoded())
			must(t, os.MkdirAll(p, 0o755))
			must(t, mkfifo(filepath.Join(p, "link")))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			s := newFS(t, root)
			walked := FromDriver(s.StorageDriver())
			for i := range 3 {
				if err := s.LinkRevision(ctx, "r", putBlob(t, s, fmt.Sprint("m", i))); err != nil {
					t.Fatal(err)
				}
			}
			p512, err := blobDataPath(d512)
			must(t, err)
			must(t, s.StorageDriver().PutContent(ctx, p512, []byte("m512")))
			if err := s.LinkRevision(ctx, "r", d512); err != nil {
				t.Fatal(err)
			}
			dir, _ := revisionsDir("r")
			tc.setup(t, s.dirs.osPath(dir))

			list := func(s *Driver) ([]digest.Digest, error) {
				var out []digest.Digest
				err := s.Revisions(ctx, "r", func(d digest.Digest) error { out = append(out, d); return nil })
				return out, err
			}
			got, errGot := list(s)
			want, errWant := list(walked)
			if (errGot == nil) != (errWant == nil) || !slices.Equal(got, want) {
				t.Errorf("read directly: %v (err %v); walked: %v (err %v)", got, errGot, want, errWant)
			}
			if errWant == nil && errors.Is(errGot, fs.ErrNotExist) {
				t.Errorf("an error taken for a missing directory (%v), with links unlisted: %v", errGot, want)
			}
		})
	}
}

// TestFilesystemTagHistoryRemovedWhileRead: a tag's history removed as it
// is read is ErrNotFound, as with the driver's walk.
func TestFilesystemTagHistoryRemovedWhileRead(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newFS(t, root)
	walked := FromDriver(s.StorageDriver())
	d := putBlob(t, s, "m")
	must(t, s.LinkRevision(ctx, "r", d))
	must(t, s.LinkTag(ctx, "r", "t", d))
	dir, _ := tagIndexDir("r", "t")
	base := s.dirs.osPath(dir)
	must(t, os.RemoveAll(base))
	must(t, os.Symlink(deadDir(t), base))
	_, errWant := walked.TagHistory(ctx, "r", "t")
	_, errGot := s.TagHistory(ctx, "r", "t")
	if !errors.Is(errWant, ErrNotFound) {
		t.Fatalf("walked: %v, want ErrNotFound", errWant)
	}
	if !errors.Is(errGot, ErrNotFound) {
		t.Errorf("read directly: %v, want ErrNotFound", errGot)
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }

// TestScanNamesSmallBuffer: a buffer too small for one entry is an error
// (getdents64 gives EINVAL), not a loop that never ends or a directory
// taken for empty.
func TestScanNamesSmallBuffer(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, digest.FromString("x").Encoded()), nil, 0o644))
	for _, n := range []int{0, 1, 18, 24, 40} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var got int
			err := scanNames(context.Background(), dir, make([]byte, n), func([]byte) { got++ })
			if err == nil && got != 1 {
				t.Fatalf("buffer of %d: %d names, no error", n, got)
			}
			t.Logf("buffer of %d: %d names, %v", n, got, err)
		})
	}
}

// TestScanNamesLongNames: names of every length up to the longest, read
// one entry at a time or many, are the names os.ReadDir gives.
func TestScanNamesLongNames(t *testing.T) {
	dir := t.TempDir()
	var want []string
	for l := 1; l <= 255; l++ {
		name := fmt.Sprintf("%0*d", l, l)
		must(t, os.WriteFile(filepath.Join(dir, name), nil, 0o644))
		want = append(want, name)
	}
	slices.Sort(want)
	for _, n := range []int{19 + 256 + 5, 1024, direntBuf} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var got []string
			must(t, scanNames(context.Background(), dir, make([]byte, n), func(b []byte) { got = append(got, string(b)) }))
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("%d names, want %d", len(got), len(want))
			}
		})
	}
}
