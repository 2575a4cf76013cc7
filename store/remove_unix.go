//go:build unix

package store

import (
	"errors"

	"golang.org/x/sys/unix"
)

// removeObjectDir unlinks file inside dir and removes dir, with dir
// opened without following a symbolic link. It reports whether dir is
// gone; false leaves the rest to the driver's Delete.
func removeObjectDir(dir, file string) bool {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return true
	}
	if err != nil {
		return false
	}
	err = unix.Unlinkat(fd, file, 0)
	unix.Close(fd)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return false
	}
	err = unix.Rmdir(dir)
	return err == nil || errors.Is(err, unix.ENOENT)
}
