package store

import "context"

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
//   - the directory, or the file, already gone is success, as for del;
//   - anything else (the directory holds another entry, the file is a
//     directory, the directory is a symbolic link or a file, a permission
//     error) falls back to the driver's Delete, which removes whatever is
//     there, as before. A symbolic link in place of the directory is
//     removed, never followed: what it points to is not the layout's.
//
// A write racing the removal meets the same steps inside os.RemoveAll: a
// link written back between the unlink and the rmdir makes the rmdir fail
// and the fallback remove it, as os.RemoveAll would have; the collector's
// intent and settle put back what a racing reference needed either way.

// delObject removes the layout directory p (a driver path) whose only
// content is the file named file; an absent directory is success.
func (s *Driver) delObject(ctx context.Context, p, file string) error {
	if s.dirs != nil && ctx.Err() == nil && removeObjectDir(s.dirs.osPath(p), file) {
		return nil
	}
	return s.del(ctx, p)
}
