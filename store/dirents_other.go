//go:build !linux

package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// scanNames calls fn with the name of every entry of dir, read
// blobSpanMax names at a time; a name is valid only during the call. A
// missing directory has no entries.
func scanNames(ctx context.Context, dir string, _ []byte, fn func(name []byte)) error {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: list %s: %w", dir, err)
	}
	defer f.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		names, err := f.Readdirnames(blobSpanMax)
		for _, name := range names {
			fn([]byte(name))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("store: list %s: %w", dir, err)
		}
	}
}

// isFile reports whether p names something other than a directory,
// following symbolic links as the driver's Stat does; a p that does not
// exist, or whose parent is not a directory, is not a file.
func isFile(p string) (bool, error) {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: stat %s: %w", p, err)
	}
	return !fi.IsDir(), nil
}
