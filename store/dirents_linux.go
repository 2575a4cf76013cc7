package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// scanNames calls fn with the name of every entry of dir ("." and ".."
// apart), read with getdents64 into buf: a name is valid only during the
// call, and reading a directory allocates nothing per entry, so that a walk
// that reads a large directory once per span of it keeps only what is in
// the span. A missing directory has no entries.
func scanNames(ctx context.Context, dir string, buf []byte, fn func(name []byte)) error {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: list %s: %w", dir, err)
	}
	defer syscall.Close(fd)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := syscall.ReadDirent(fd, buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("store: list %s: %w", dir, err)
		}
		if n <= 0 {
			return nil
		}
		// struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16,
		// d_type u8, then the name, NUL-terminated.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return fmt.Errorf("store: list %s: malformed directory entry", dir)
			}
			rec := b[:reclen]
			b = b[reclen:]
			if binary.NativeEndian.Uint64(rec[0:8]) == 0 {
				continue // a deleted entry
			}
			name := rec[19:]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if string(name) == "." || string(name) == ".." {
				continue
			}
			fn(name)
		}
	}
}

// isFile reports whether p names something other than a directory,
// following symbolic links as the driver's Stat does; a p that does not
// exist, or whose parent is not a directory, is not a file.
func isFile(p string) (bool, error) {
	var st syscall.Stat_t
	err := syscall.Stat(p, &st)
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: stat %s: %w", p, err)
	}
	return st.Mode&syscall.S_IFMT != syscall.S_IFDIR, nil
}
