//go:build !linux

package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// scanNames calls fn with the name of every entry of dir; a name is valid
// only during the call. A missing directory has no entries.
func scanNames(ctx context.Context, dir string, _ []byte, fn func(name []byte)) error {
	return readNames(ctx, dir, blobSpanMax, func(name string) { fn([]byte(name)) })
}

// readNames calls fn with the name of every entry of dir, reading at most
// n names at a time. A missing directory has no entries.
func readNames(ctx context.Context, dir string, n int, fn func(name string)) error {
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
		names, err := f.Readdirnames(n)
		for _, name := range names {
			fn(name)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("store: list %s: %w", dir, err)
		}
	}
}
