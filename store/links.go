package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/opencontainers/go-digest"
)

// # Link directories on the filesystem
//
// A repository keeps its revisions, its layer links and each tag's history
// as <alg>/<hex>/link under one directory. Distribution's filesystem driver
// walks such a directory with a List of every directory (each entry's full
// path built) and a Stat of every entry (WalkFallback): five system calls
// and about a kilobyte of garbage per link. The storage check lists a
// repository's revisions before every round that unlinks in it, and a
// reconcile pass every repository's, so on the filesystem driver the store
// reads these directories itself: each <alg> directory's names at once,
// sorted (the walk's order), and one stat of each <hex>/link. The result is
// the walk's: the links that are files, in order; an entry that vanishes
// while the directory is read (an unlink running beside the walk) is passed
// over, as walkTree does, and so is a directory removed between its opening
// and its reading; dir itself missing is "not found".

// fsLinks is walkLinks on the filesystem driver.
func (s *Driver) fsLinks(ctx context.Context, dir string, fn func(d digest.Digest) error) (found bool, err error) {
	root := s.dirs.osPath(dir)
	algs, found, err := sortedNames(ctx, root)
	if !found || err != nil {
		return found, err
	}
	for _, alg := range algs {
		algDir := filepath.Join(root, alg)
		hexes, _, err := sortedNames(ctx, algDir)
		if errors.Is(err, syscall.ENOTDIR) {
			continue // a file at the top: not a link directory
		}
		if err != nil {
			return true, err
		}
		for _, hex := range hexes {
			d, ok := digestFromDir(alg, hex)
			if !ok {
				continue
			}
			file, err := isFile(filepath.Join(algDir, hex, linkFile))
			if err != nil {
				return true, err
			}
			if !file {
				continue // vanished, not a link directory, or link is a directory
			}
			if err := fn(d); err != nil {
				return true, err
			}
		}
	}
	return true, nil
}

// sortedNames returns the names of dir's entries, sorted; found is false
// when dir does not exist.
func sortedNames(ctx context.Context, dir string) (names []string, found bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: list %s: %w", dir, err)
	}
	defer f.Close()
	names, err = f.Readdirnames(-1)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil // removed between its opening and its reading
	}
	if err != nil {
		return nil, true, fmt.Errorf("store: list %s: %w", dir, err)
	}
	slices.Sort(names)
	return names, true, nil
}
