package store

// # Empty directories
//
// Distribution's filesystem driver keeps directories: deleting a link
// file, or a link's directory (the driver's Delete is os.RemoveAll), leaves
// its parents behind, and a repository whose every tag, revision and layer
// link is gone stays as a tree of empty directories; so does a blob prefix
// directory (blobs/sha256/ab/) whose every blob was purged. Object stores
// have no directories (a prefix exists while a key under it does), so only
// a Driver over the filesystem driver has EmptyDirs.
//
// The registry writes a file in two steps: os.MkdirAll of its parent, then
// the create (os.OpenFile, or os.Rename for a PutContent or an upload's
// commit). A directory removed between the two makes the create fail
// (ENOENT): the registry answers that request with an error and has
// written nothing, so nothing it acknowledged can be lost; the client
// retries. EmptyDirs keeps that window as small and as rare as it can:
//
//   - A directory is removed only with rmdir, which fails unless it is
//     empty at that instant: never os.RemoveAll, never a file.
//   - Only a directory whose modification time is before the caller's
//     bound (the grace): a directory the registry has just created, or in
//     which it has added or removed an entry since, is left for later. The
//     time is read before its children are removed (removing them is not
//     the registry's activity), so a tree goes in one call, deepest first.
//   - Never anything under _uploads: an upload in progress owns its
//     directory; _uploads itself goes only when empty and old.
//   - Only within the repository or the blob the caller names, and the
//     empty namespace directories above a repository (a/ of a/b), never
//     the layout's own roots (repositories/, blobs/).
//
// What is left is a push into a directory that has stayed empty and
// untouched for longer than the grace, landing within the microseconds
// between the registry's MkdirAll and its create: that one request fails
// and is retried (docs/DELIVERY.md, "Empty directories").

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// uploadsDir is where Distribution keeps a repository's uploads in progress.
const uploadsDir = "_uploads"

// EmptyDirs removes the empty directories that the filesystem layout keeps
// after unlinks and purges. It is safe for concurrent use.
type EmptyDirs struct {
	// root is the driver's root directory joined with Root, in OS form.
	root string
	// beforeRmdir, if set, is called right before each rmdir (tests inject
	// a racing write there).
	beforeRmdir func(dir string)
}

// EmptyDirs returns the remover of empty directories of a Driver over the
// filesystem driver, or nil for a storage without directories (object
// stores) or of unknown layout (FromDriver).
func (s *Driver) EmptyDirs() *EmptyDirs { return s.dirs }

// WithRmdirHook calls fn right before every rmdir the store makes on the
// filesystem (EmptyDirs, and a link's or blob's own directory after its
// file is unlinked), with the directory: for tests that inject a write
// racing the removal.
func WithRmdirHook(fn func(dir string)) Option {
	return func(s *Driver) { s.rmdirHook = fn }
}

// newEmptyDirs is the remover for the filesystem driver's parameters.
func newEmptyDirs(params map[string]any, hook func(string)) *EmptyDirs {
	// As the driver reads it (filesystem.fromParametersImpl): a key that is
	// present is taken as it is, even empty.
	root := defaultFilesystemRoot
	if v, ok := params["rootdirectory"]; ok {
		root = fmt.Sprint(v)
	}
	return &EmptyDirs{root: filepath.Join(root, filepath.FromSlash(Root)), beforeRmdir: hook}
}

// defaultFilesystemRoot is the filesystem driver's rootdirectory default
// (Distribution v3.1.2).
const defaultFilesystemRoot = "/var/lib/registry"

// PruneRepository removes repo's empty directories whose modification
// time is before `before`, deepest first, then the empty namespace
// directories above it. The caller must know that the repository holds
// nothing (its projection has no tag, revision or layer link of it).
// Repositories nested under its name are not entered. It returns how many
// directories it removed, and whether some remain only for being too
// recent (or for a write that landed as they went): the caller tries again
// later. A repository that still holds a file is not pending.
func (e *EmptyDirs) PruneRepository(ctx context.Context, repo string, before time.Time) (removed int, pending bool, err error) {
	if err := checkRepo(repo); err != nil {
		return 0, false, err
	}
	reposDir := filepath.Join(e.root, "repositories")
	return e.pruneTree(ctx, filepath.Join(reposDir, filepath.FromSlash(repo)), reposDir, before, true)
}

// PruneBlob removes the directories of a purged blob that are empty and
// older than `before`: blobs/<alg>/<2 hex>/<hex>/, then its prefix and
// algorithm directories. pending is as for PruneRepository.
func (e *EmptyDirs) PruneBlob(ctx context.Context, d digest.Digest, before time.Time) (removed int, pending bool, err error) {
	rel, err := blobDir(d)
	if err != nil {
		return 0, false, err
	}
	return e.pruneTree(ctx, e.osPath(rel), filepath.Join(e.root, "blobs"), before, false)
}

// osPath is the filesystem path, in OS form, of the layout's path p (under
// Root).
func (e *EmptyDirs) osPath(p string) string {
	return filepath.Join(e.root, filepath.FromSlash(strings.TrimPrefix(p, Root)))
}

// pruneTree prunes dir, and once it is gone its ancestors up to stop.
func (e *EmptyDirs) pruneTree(ctx context.Context, dir, stop string, before time.Time, repoTop bool) (removed int, pending bool, err error) {
	up := e.ancestors(dir, stop, before)
	r, err := e.prune(ctx, dir, before, repoTop)
	if err != nil || !r.gone {
		return r.removed, r.recent && !r.content, err
	}
	n, pending, err := e.pruneUp(up)
	return r.removed + n, pending, err
}

// pruned is what prune found and did.
type pruned struct {
	removed int
	gone    bool // the directory is gone (or was never there)
	content bool // a file, a nested repository or an upload remains below
	recent  bool // an empty directory remains for being too recent
}

// prune removes dir's empty subdirectories and then dir itself, deepest
// first, each only if it is empty and its modification time, read before
// its children went, is before `before`. At a repository's top (repoTop),
// _uploads is not entered and names not starting with "_" (nested
// repositories) are left alone.
func (e *EmptyDirs) prune(ctx context.Context, dir string, before time.Time, repoTop bool) (r pruned, err error) {
	if err := ctx.Err(); err != nil {
		return r, err
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return pruned{gone: true}, nil
	}
	if err != nil {
		return r, fmt.Errorf("store: empty directories: %w", err)
	}
	if !fi.IsDir() {
		return pruned{content: true}, nil // a file (or a link)
	}
	old := fi.ModTime().Before(before)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return pruned{gone: true}, nil
	}
	if err != nil {
		return r, fmt.Errorf("store: empty directories: %w", err)
	}
	for _, ent := range entries {
		child := filepath.Join(dir, ent.Name())
		switch {
		case !ent.IsDir():
			r.content = true
		case repoTop && ent.Name() == uploadsDir:
			ok, err := e.rmdirOld(child, before)
			if err != nil {
				return r, err
			}
			if ok {
				r.removed++
			} else {
				r.content = true // an upload, or a recent _uploads: either way not ours to wait for
			}
		case repoTop && !strings.HasPrefix(ent.Name(), "_"):
			r.content = true // another repository's namespace
		default:
			c, err := e.prune(ctx, child, before, false)
			r.removed += c.removed
			r.content = r.content || c.content
			r.recent = r.recent || c.recent
			if err != nil {
				return r, err
			}
		}
	}
	if r.content || r.recent {
		return r, nil
	}
	if !old {
		r.recent = true
		return r, nil
	}
	ok, err := e.rmdir(dir)
	if err != nil {
		return r, err
	}
	if !ok {
		r.recent = true // a write landed: look again later
		return r, nil
	}
	r.removed++
	r.gone = true
	return r, nil
}

// isEmptyDir reports whether dir has no entry.
func isEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

// ancestor is a directory above the one pruned, and whether it was older
// than the bound before anything below it was removed.
type ancestor struct {
	dir string
	old bool
}

// ancestors lists dir's parents up to (not including) stop, with their
// age read now: the removals that follow change their modification times,
// and are not the registry's activity.
func (e *EmptyDirs) ancestors(dir, stop string, before time.Time) []ancestor {
	var out []ancestor
	for p := filepath.Dir(dir); p != stop && strings.HasPrefix(p, stop+string(filepath.Separator)); p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		out = append(out, ancestor{dir: p, old: err == nil && fi.IsDir() && fi.ModTime().Before(before)})
	}
	return out
}

// pruneUp removes the ancestors, nearest first, while each is empty and
// was old. pending reports a stop at an empty one that was too recent.
func (e *EmptyDirs) pruneUp(up []ancestor) (removed int, pending bool, err error) {
	for _, a := range up {
		if !a.old {
			return removed, isEmptyDir(a.dir), nil
		}
		ok, err := e.rmdir(a.dir)
		if err != nil || !ok {
			return removed, false, err
		}
		removed++
	}
	return removed, false, nil
}

// rmdirOld removes dir if it is a directory older than before and empty.
func (e *EmptyDirs) rmdirOld(dir string, before time.Time) (bool, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: empty directories: %w", err)
	}
	if !fi.IsDir() || !fi.ModTime().Before(before) {
		return false, nil
	}
	return e.rmdir(dir)
}

// rmdir removes dir if it is empty at this instant: a directory that is
// not (a write landed), or is gone, is no error.
func (e *EmptyDirs) rmdir(dir string) (bool, error) {
	if e.beforeRmdir != nil {
		e.beforeRmdir(dir)
	}
	err := syscall.Rmdir(dir)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST), errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("store: remove empty directory %s: %w", dir, err)
}
