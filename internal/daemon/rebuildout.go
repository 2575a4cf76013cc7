package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/refgc/refgc/collector/reconcile"
)

// ErrRebuildOut is returned (wrapped) for a rebuild target outside the
// rebuild directory, or that is no plain file name.
var ErrRebuildOut = errors.New("daemon: rebuild target must be a new file in the rebuild directory")

// rebuildTarget turns the out parameter of POST /v1/rebuild into the path
// to create. An admin request may write only a new file directly in the
// rebuild directory: out is a file name, or an absolute path whose
// directory is the rebuild directory. The file must not exist, not even as
// a link; the check goes through an os.Root, which resolves nothing outside
// the directory, and the rebuild itself creates the file with O_EXCL, which
// follows no link.
func (d *Daemon) rebuildTarget(out string) (string, error) {
	dir, err := filepath.Abs(d.cfg.rebuildDir())
	if err != nil {
		return "", fmt.Errorf("daemon: rebuild directory: %w", err)
	}
	name := out
	if filepath.IsAbs(out) {
		if filepath.Dir(filepath.Clean(out)) != dir {
			return "", fmt.Errorf("%w: %q is not in %s", ErrRebuildOut, out, dir)
		}
		name = filepath.Base(out)
	}
	if name == "" || name != filepath.Base(name) || !filepath.IsLocal(name) {
		return "", fmt.Errorf("%w: %q is not a file name (the rebuild directory is %s)", ErrRebuildOut, out, dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("daemon: rebuild directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("daemon: rebuild directory: %w", err)
	}
	defer root.Close()
	if _, err := root.Lstat(name); err == nil {
		return "", fmt.Errorf("%w: %s", reconcile.ErrRebuildTarget, filepath.Join(dir, name))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %w", ErrRebuildOut, err)
	}
	return filepath.Join(dir, name), nil
}
