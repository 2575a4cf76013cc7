package store

import (
	"context"
	"errors"
	"fmt"
)

// # Removing a link or a blob on the filesystem
//
// Every object the collector removes is a directory of the layout holding
// one file: <hex>/link for a revision, a layer link or a tag's history
// entry, <2 hex>/<hex>/data for a blob. Distribution's filesystem driver
// removes a path with a Stat and then os.RemoveAll, which does not know
// the layout: it tries an unlink and an rmdir of the directory that fail,
// opens the parent, tries the unlink again, stats, opens the directory,
// reads it to the end, unlinks the file, closes, and removes the
// directory: about fourteen system calls for the two that do the work.
// Four of them (the three that fail and the last) lock the parent
// directory, which every removal in the same repository or blob prefix
// shares, so removals in flight together wait on each other there.
//
// On the filesystem driver (unix) the store removes such a directory
// itself: it opens it without following a symbolic link, unlinks the one
// file through that descriptor, closes it, and rmdirs the directory. The
// parent is locked once. The result is the driver's, or the driver
// decides:
//   - the file already gone is as good as unlinked; the directory gone
//     before it is opened is left to the driver (its Stat says "not
//     found", which del takes for success), so the store never reports a
//     removal it did not see;
//   - anything else (the directory holds another entry, the file is a
//     directory, the directory is a symbolic link or a file, a permission
//     error) falls back to the driver's Delete, which removes whatever is
//     there, as before. A symbolic link in place of the directory is never
//     followed.
//
// A write racing the removal: the registry writing the file again
// between the unlink and the rmdir makes the rmdir fail. os.RemoveAll
// then fails too and leaves the new file; so does the store
// (errRewritten), rather than fall back to removing it. The collector's
// intent stays for its next pass, which finds the node referenced again.

// delObject removes the layout directory p (a driver path) whose only
// content is the file named file; an absent directory is success.
func (s *Driver) delObject(ctx context.Context, p, file string) error {
	if s.dirs != nil && ctx.Err() == nil {
		gone, err := removeObjectDir(s.dirs.osPath(p), file, s.rmdirHook)
		if err != nil {
			return fmt.Errorf("store: delete %s: %w", p, err)
		}
		if gone {
			return nil
		}
	}
	return s.del(ctx, p)
}

// errRewritten is a link or blob file written again while the store
// removed it.
var errRewritten = errors.New("rewritten during its removal")
