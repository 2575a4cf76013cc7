package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// # Blob spans
//
// The blob store keeps each blob's data in a prefix directory named by the
// first two hex digits of its digest (blobs/sha256/ab/ab…/data): 256
// directories, each holding 1/256 of the registry's blobs, more as the
// registry grows. BlobSpans gives a directory as consecutive spans of at
// most about blobSpanMax (64) digests each, in digest order, so that what a
// walker holds does not grow with the registry:
//
//   - Object stores (and any driver but the filesystem's) list keys in
//     lexical order, which is digest order within a directory; the driver's
//     Walk pages through them (the s3 driver 1,000 keys per ListObjectsV2,
//     the same requests as before), and a span is cut every blobSpanMax
//     digests. A listing out of order stops the walk with an error rather
//     than give a span that misses a digest.
//   - The filesystem driver's List reads a directory whole, and a directory
//     comes back in no useful order. The filesystem's directories are read
//     directly instead: one pass counts the entries, then one pass per span
//     keeps the names in that span's range of digests (the ranges split the
//     next four hex digits evenly: digests are uniform), sorts them and
//     checks each one's data file. A small directory (at most blobSpanMax
//     entries) is one pass and one span. A pass reads the entries into a
//     buffer of the walker's (getdents64, on Linux) and copies only the
//     names in its span: a directory of n entries is read 1 + ⌈n/64⌉ times,
//     and names allocated once each would make that n²/64 garbage.

// blobSpanMax is about the most digests a span of BlobSpans holds.
const blobSpanMax = 64

// direntBuf is the size of the buffer a walker reads a blob directory's
// entries into (about 350 entries of a directory of blobs a read).
const direntBuf = 32 << 10

// direntBufs keeps the walkers' buffers from one blob directory to the
// next: a pass reads 256 of them per algorithm.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, direntBuf); return &b }}

// maxSpans bounds the spans of one filesystem directory: its ranges split
// the four hex digits after the prefix.
const maxSpans = 1 << 16

// BlobSpans calls fn for every prefix directory of the blob store (an empty
// or vanished one included) as consecutive spans in digest order: ds holds
// the blobs that have data in the directory of algorithm alg and prefix
// (two hex digits) whose encoded digest e has from <= e < to, sorted; from
// is empty for a directory's first span and to for its last, and each span
// starts where the one before it ended. fn is called for one span at a time
// and must not keep ds after it returns. The directories are walked
// concurrently (bounded): each walker holds one span.
func (s *Driver) BlobSpans(ctx context.Context, fn func(alg digest.Algorithm, prefix, from, to string, ds []digest.Digest) error) error {
	algs, err := s.list(ctx, blobsRoot)
	if err != nil {
		return err
	}
	f := newFanout(ctx, s.concurrency)
	for _, algDir := range algs {
		alg := path.Base(algDir)
		if !digest.Algorithm(alg).Available() {
			s.log.Debug("store: skipping unknown blob algorithm", "dir", algDir)
			continue
		}
		prefixes, err := s.list(ctx, algDir)
		if err != nil {
			f.fail(err)
			break
		}
		for _, prefixDir := range prefixes {
			prefix := path.Base(prefixDir)
			f.do(func(ctx context.Context) error {
				emit := func(from, to string, ds []digest.Digest) error {
					return f.emit(func() error { return fn(digest.Algorithm(alg), prefix, from, to, ds) })
				}
				if s.dirs != nil {
					return s.fsBlobSpans(ctx, s.dirs.osPath(prefixDir), alg, prefix, emit)
				}
				return s.walkBlobSpans(ctx, prefixDir, alg, prefix, emit)
			})
			if f.failed() {
				break
			}
		}
	}
	return f.wait()
}

// walkBlobSpans gives a prefix directory's spans from the driver's walk,
// which lists keys in lexical order.
func (s *Driver) walkBlobSpans(ctx context.Context, prefixDir, alg, prefix string, emit func(from, to string, ds []digest.Digest) error) error {
	var (
		ds    []digest.Digest
		from  string
		last  digest.Digest
		fnErr error
	)
	_, err := s.walkFiles(ctx, prefixDir, 2, func(parts []string, fi storagedriver.FileInfo) error {
		if parts[1] != "data" || !strings.HasPrefix(parts[0], prefix) {
			return nil
		}
		d, ok := digestFromDir(alg, parts[0])
		if !ok {
			s.log.Debug("store: skipping blob with an invalid digest path", "path", fi.Path())
			return nil
		}
		if last != "" && d <= last {
			fnErr = fmt.Errorf("store: blobs under %s listed out of digest order (%s after %s)", prefixDir, d, last)
			return fnErr
		}
		last = d
		if len(ds) >= s.spanMax {
			to := d.Encoded()
			if fnErr = emit(from, to, ds); fnErr != nil {
				return fnErr
			}
			from, ds = to, ds[:0]
		}
		ds = append(ds, d)
		return nil
	})
	if fnErr != nil {
		// Its own error, not taken for a walk that found nothing.
		return fnErr
	}
	if err != nil && !isNotFound(err) {
		return err
	}
	return emit(from, "", ds)
}

// fsBlobSpans gives the spans of a prefix directory of the filesystem
// driver, dir in OS form, read directly.
func (s *Driver) fsBlobSpans(ctx context.Context, dir, alg, prefix string, emit func(from, to string, ds []digest.Digest) error) error {
	n := 0
	var first []digest.Digest
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	err := scanNames(ctx, dir, buf, func(name []byte) {
		if n++; n > s.spanMax {
			first = nil
		} else if d, ok := blobName(alg, prefix, string(name)); ok {
			first = append(first, d)
		}
	})
	if err != nil {
		return err
	}
	if n <= s.spanMax {
		return s.fsSpan(dir, "", "", first, emit)
	}
	spans := min((n+s.spanMax-1)/s.spanMax, maxSpans)
	bound := func(i int) string {
		if i == 0 || i == spans {
			return ""
		}
		return fmt.Sprintf("%s%04x", prefix, i*maxSpans/spans)
	}
	var ds []digest.Digest
	for i := range spans {
		from, to := bound(i), bound(i+1)
		ds = ds[:0]
		err := scanNames(ctx, dir, buf, func(name []byte) {
			if string(name) < from || (to != "" && string(name) >= to) {
				return // another span's (compared first: only a name in the span is copied)
			}
			if d, ok := blobName(alg, prefix, string(name)); ok {
				ds = append(ds, d)
			}
		})
		if err != nil {
			return err
		}
		if err := s.fsSpan(dir, from, to, ds, emit); err != nil {
			return err
		}
	}
	return nil
}

// fsSpan sorts a span's digests, keeps those whose data file exists, and
// emits them.
func (s *Driver) fsSpan(dir, from, to string, ds []digest.Digest, emit func(from, to string, ds []digest.Digest) error) error {
	slices.Sort(ds)
	kept := ds[:0]
	for _, d := range ds {
		fi, err := os.Stat(filepath.Join(dir, d.Encoded(), "data"))
		switch {
		case err == nil && !fi.IsDir():
			kept = append(kept, d)
		case err == nil, errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			// no data file: not a blob (or purged since the listing)
		default:
			return fmt.Errorf("store: stat blob %s: %w", d, err)
		}
	}
	return emit(from, to, kept)
}

// blobName is the digest of an entry of a prefix directory, if it names one
// of that prefix.
func blobName(alg, prefix, name string) (digest.Digest, bool) {
	if !strings.HasPrefix(name, prefix) {
		return "", false
	}
	return digestFromDir(alg, name)
}
