//go:build unix

package store

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// removeObjectDir unlinks file inside dir and removes dir, with dir
// opened without following a symbolic link. It reports whether dir is
// gone; false with no error leaves the rest to the driver's Delete. An
// rmdir that finds file written again after the unlink is an error: a
// racing write, left in place. beforeRmdir, if set, is called between the
// unlink and the rmdir (WithRmdirHook).
func removeObjectDir(dir, file string, beforeRmdir func(string)) (bool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil // gone, or not a plain directory: the driver decides
	}
	err = unix.Unlinkat(fd, file, 0)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		unix.Close(fd)
		return false, nil
	}
	if beforeRmdir != nil {
		beforeRmdir(dir)
	}
	err = unix.Rmdir(dir)
	if err == nil || errors.Is(err, unix.ENOENT) {
		unix.Close(fd)
		return true, nil
	}
	var st unix.Stat_t
	rewritten := (errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST)) &&
		unix.Fstatat(fd, file, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	unix.Close(fd)
	if rewritten {
		return false, fmt.Errorf("%w: %s written again while it was removed", errRewritten, file)
	}
	return false, nil
}
