package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
)

// DefaultConcurrency bounds the storage calls one walk has in flight.
const DefaultConcurrency = 16

// Driver implements Store over a Distribution storage driver.
type Driver struct {
	d           storagedriver.StorageDriver
	concurrency int
	log         *slog.Logger
	backoff     Backoff
	reg         prometheus.Registerer
	dirs        *EmptyDirs   // the filesystem driver's only
	spanMax     int          // about the most digests of one span of BlobSpans
	rmdirHook   func(string) // WithRmdirHook
}

// Option configures a Driver.
type Option func(*Driver)

// WithConcurrency bounds the storage calls one walk has in flight (at least 1).
func WithConcurrency(n int) Option {
	return func(s *Driver) {
		if n >= 1 {
			s.concurrency = n
		}
	}
}

// WithLogger sets the logger; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(s *Driver) {
		if l != nil {
			s.log = l
		}
	}
}

// FromDriver returns a Driver acting on an existing storage driver. Its
// calls back off while the backend throttles them (see Backoff).
func FromDriver(d storagedriver.StorageDriver, opts ...Option) *Driver {
	s := &Driver{d: d, concurrency: DefaultConcurrency, log: slog.Default(), spanMax: blobSpanMax}
	for _, o := range opts {
		o(s)
	}
	s.d = &backoffDriver{StorageDriver: d, t: newThrottle(s.backoff, s.reg)}
	return s
}

// StorageDriver returns the underlying Distribution storage driver, its
// calls backing off while the backend throttles them.
func (s *Driver) StorageDriver() storagedriver.StorageDriver { return s.d }

func isNotFound(err error) bool {
	var nf storagedriver.PathNotFoundError
	var nfp *storagedriver.PathNotFoundError
	var de storagedriver.Error
	// A directory removed between its opening and its reading (the
	// filesystem driver's List) comes back as a driver error around ENOENT.
	return errors.As(err, &nf) || errors.As(err, &nfp) || (errors.As(err, &de) && errors.Is(de.Detail, fs.ErrNotExist))
}

// del deletes a path; an absent path is success.
func (s *Driver) del(ctx context.Context, p string) error {
	if err := s.d.Delete(ctx, p); err != nil && !isNotFound(err) {
		return fmt.Errorf("store: delete %s: %w", p, err)
	}
	return nil
}

func (s *Driver) putLink(ctx context.Context, p string, d digest.Digest) error {
	if err := s.d.PutContent(ctx, p, []byte(d.String())); err != nil {
		return fmt.Errorf("store: write link %s: %w", p, err)
	}
	return nil
}

// readLink reads a link file. found is false when it does not exist.
func (s *Driver) readLink(ctx context.Context, p string) (d digest.Digest, found bool, err error) {
	b, err := s.d.GetContent(ctx, p)
	if err != nil {
		if isNotFound(err) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("store: read link %s: %w", p, err)
	}
	d = digest.Digest(b)
	if err := events.ValidateDigest(d); err != nil {
		return "", false, fmt.Errorf("%w: %s: %w", ErrCorrupt, p, err)
	}
	return d, true, nil
}

func (s *Driver) list(ctx context.Context, dir string) ([]string, error) {
	children, err := s.d.List(ctx, dir)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("store: list %s: %w", dir, err)
	}
	out := children[:0]
	for _, c := range children {
		c = path.Clean(c)
		if path.Dir(c) == dir {
			out = append(out, c)
		}
	}
	return out, nil
}

// DeleteTag implements Store.
func (s *Driver) DeleteTag(ctx context.Context, repo, tag string) error {
	p, err := tagDir(repo, tag)
	if err != nil {
		return err
	}
	return s.del(ctx, p)
}

// DeleteRevision implements Store. History entries go first, the revision
// last, as Distribution's own vacuum does.
func (s *Driver) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	rev, err := revisionDir(repo, d)
	if err != nil {
		return err
	}
	entries := make([]string, 0, len(tags))
	for _, t := range tags {
		p, err := tagIndexEntryDir(repo, t, d)
		if err != nil {
			return err
		}
		if !slices.Contains(entries, p) {
			entries = append(entries, p)
		}
	}
	for _, p := range entries {
		if err := s.delObject(ctx, p, linkFile); err != nil {
			return err
		}
	}
	return s.delObject(ctx, rev, linkFile)
}

// DeleteLayerLink implements Store.
func (s *Driver) DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error {
	p, err := layerDir(repo, d)
	if err != nil {
		return err
	}
	return s.delObject(ctx, p, linkFile)
}

// PurgeBlob implements Store.
func (s *Driver) PurgeBlob(ctx context.Context, d digest.Digest) error {
	p, err := blobDir(d)
	if err != nil {
		return err
	}
	return s.delObject(ctx, p, dataFile)
}

var errStop = errors.New("stop")

// DeleteRepository implements Store. The emptiness check and the removal are
// not atomic: a push into the repository between them would lose its links.
// The caller must only delete a repository that nothing has touched within
// its lease (the collector's rule for every object).
func (s *Driver) DeleteRepository(ctx context.Context, repo string) error {
	manifests, err := repoPath(repo, "_manifests")
	if err != nil {
		return err
	}
	layers, _ := repoPath(repo, "_layers")
	uploads, _ := repoPath(repo, "_uploads")

	stop := func(...any) error { return errStop }
	checks := []func() error{
		func() error { return s.Tags(ctx, repo, func(string, digest.Digest) error { return stop() }) },
		func() error { return s.Revisions(ctx, repo, func(digest.Digest) error { return stop() }) },
		func() error { return s.LayerLinks(ctx, repo, func(digest.Digest) error { return stop() }) },
		func() error {
			up, err := s.list(ctx, uploads)
			if err == nil && len(up) > 0 {
				return errStop
			}
			return err
		},
	}
	for _, check := range checks {
		switch err := check(); {
		case errors.Is(err, errStop):
			return fmt.Errorf("%w: %s", ErrNotEmpty, repo)
		case err != nil:
			return err
		}
	}
	for _, p := range []string{uploads, layers, manifests} {
		if err := s.del(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// requireBlob gives ErrNotFound when the blob's data is gone: a link to
// missing data would be a broken object, so restores refuse it.
func (s *Driver) requireBlob(ctx context.Context, d digest.Digest) error {
	_, err := s.StatBlob(ctx, d)
	return err
}

// LinkTag implements Store. It gives ErrNotFound if the blob data is gone.
func (s *Driver) LinkTag(ctx context.Context, repo, tag string, d digest.Digest) error {
	entry, err := tagIndexEntryDir(repo, tag, d)
	if err != nil {
		return err
	}
	current, err := tagCurrentLink(repo, tag)
	if err != nil {
		return err
	}
	if err := s.requireBlob(ctx, d); err != nil {
		return err
	}
	if err := s.putLink(ctx, entry+"/link", d); err != nil {
		return err
	}
	return s.putLink(ctx, current, d)
}

// LinkRevision implements Store. It gives ErrNotFound if the blob data is gone.
func (s *Driver) LinkRevision(ctx context.Context, repo string, d digest.Digest) error {
	dir, err := revisionDir(repo, d)
	if err != nil {
		return err
	}
	if err := s.requireBlob(ctx, d); err != nil {
		return err
	}
	return s.putLink(ctx, dir+"/link", d)
}

// LinkLayer implements Store. It gives ErrNotFound if the blob data is gone.
func (s *Driver) LinkLayer(ctx context.Context, repo string, d digest.Digest) error {
	dir, err := layerDir(repo, d)
	if err != nil {
		return err
	}
	if err := s.requireBlob(ctx, d); err != nil {
		return err
	}
	return s.putLink(ctx, dir+"/link", d)
}

// Repositories implements Store. It lists the name hierarchy directory by
// directory (one List per directory, never the link files below
// _manifests or _layers), with bounded concurrency.
func (s *Driver) Repositories(ctx context.Context, fn func(repo string) error) error {
	f := newFanout(ctx, s.concurrency)
	var visit func(ctx context.Context, dir string) error
	visit = func(ctx context.Context, dir string) error {
		children, err := s.list(ctx, dir)
		if err != nil {
			return err
		}
		isRepo := false
		for _, c := range children {
			base := path.Base(c)
			if base == "_manifests" {
				isRepo = true
				continue
			}
			if strings.HasPrefix(base, "_") {
				continue // _layers, _uploads: never part of a name
			}
			f.do(func(ctx context.Context) error { return visit(ctx, c) })
		}
		if isRepo && dir != reposRoot {
			name := strings.TrimPrefix(dir, reposRoot+"/")
			if err := events.ValidateRepo(name); err != nil {
				s.log.Debug("store: skipping repository with an invalid name", "name", name, "err", err)
				return nil
			}
			return f.emit(func() error { return fn(name) })
		}
		return nil
	}
	f.do(func(ctx context.Context) error { return visit(ctx, reposRoot) })
	return f.wait()
}

// Tags implements Store. Tag directories without a current link (which the
// registry does not serve) are skipped.
func (s *Driver) Tags(ctx context.Context, repo string, fn func(tag string, current digest.Digest) error) error {
	dir, err := repoPath(repo, "_manifests", "tags")
	if err != nil {
		return err
	}
	children, err := s.list(ctx, dir)
	if err != nil {
		return err
	}
	f := newFanout(ctx, s.concurrency)
	for _, c := range children {
		tag := path.Base(c)
		current, err := tagCurrentLink(repo, tag)
		if err != nil {
			s.log.Debug("store: skipping tag with an invalid name", "repo", repo, "tag", tag, "err", err)
			continue
		}
		f.do(func(ctx context.Context) error {
			d, found, err := s.readLink(ctx, current)
			if err != nil || !found {
				return err
			}
			return f.emit(func() error { return fn(tag, d) })
		})
		if f.failed() {
			break
		}
	}
	return f.wait()
}

// walk walks the tree under dir as the driver's Walk does. Drivers that
// have directories and walk them one listing at a time (filesystem,
// inmemory: Distribution's WalkFallback) go through walkTree instead, which
// passes over a directory deleted while the walk runs: the fallback ends
// the whole walk with "not found" there, and a listing cut short would hide
// what comes after it (a tag, a revision) from the storage check.
func (s *Driver) walk(ctx context.Context, dir string, f storagedriver.WalkFn) error {
	switch s.d.Name() {
	case "filesystem", "inmemory":
		return s.walkTree(ctx, dir, f)
	}
	return s.d.Walk(ctx, dir, f)
}

// walkTree is Distribution's WalkFallback (depth first, each directory's
// entries sorted, a stat per entry) with one difference: an entry that
// vanishes between its directory's listing and its own stat or listing is
// passed over, as an unlink running beside the walk makes it. dir itself
// missing is still "not found".
func (s *Driver) walkTree(ctx context.Context, dir string, f storagedriver.WalkFn) error {
	children, err := s.d.List(ctx, dir)
	if err != nil {
		return err
	}
	slices.Sort(children)
	for _, child := range children {
		fi, err := s.d.Stat(ctx, child)
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return err
		}
		err = f(fi)
		switch {
		case err == nil && fi.IsDir():
			if err := s.walkTree(ctx, child, f); err != nil && !(isNotFound(err) && strings.HasSuffix(notFoundPath(err), child)) {
				return err
			}
		case errors.Is(err, storagedriver.ErrSkipDir):
		case err != nil:
			return err
		}
	}
	return nil
}

// notFoundPath is the path a "not found" error names (for a driver error
// around the system's, the full path on the filesystem).
func notFoundPath(err error) string {
	var nf storagedriver.PathNotFoundError
	var nfp *storagedriver.PathNotFoundError
	var pe *fs.PathError
	switch {
	case errors.As(err, &nf):
		return path.Clean(nf.Path)
	case errors.As(err, &nfp):
		return path.Clean(nfp.Path)
	}
	var de storagedriver.Error
	if errors.As(err, &de) && errors.As(de.Detail, &pe) {
		return path.Clean(filepath.ToSlash(pe.Path))
	}
	return ""
}

// walkFiles walks dir (s.walk) for the files exactly depth path elements
// below it, passing over deeper directories, and calls fn with each file's
// elements. What fn returns ends the walk and comes back as is (drivers
// wrap it). visited says whether the walk saw any entry at all.
func (s *Driver) walkFiles(ctx context.Context, dir string, depth int, fn func(parts []string, fi storagedriver.FileInfo) error) (visited bool, err error) {
	var fnErr error
	err = s.walk(ctx, dir, func(fi storagedriver.FileInfo) error {
		visited = true
		rel, ok := strings.CutPrefix(path.Clean(fi.Path()), dir+"/")
		if !ok {
			return nil
		}
		parts := strings.Split(rel, "/")
		switch {
		case fi.IsDir() && len(parts) >= depth:
			return storagedriver.ErrSkipDir
		case fi.IsDir() || len(parts) != depth:
			return nil
		}
		fnErr = fn(parts, fi)
		return fnErr
	})
	if fnErr != nil {
		return visited, fnErr
	}
	return visited, err
}

// walkLinks walks dir for <alg>/<hex>/link files and calls fn with each
// digest, serially. found is false if dir does not exist.
func (s *Driver) walkLinks(ctx context.Context, dir string, fn func(d digest.Digest) error) (found bool, err error) {
	if s.dirs != nil {
		return s.fsLinks(ctx, dir, fn)
	}
	var fnErr error
	visited, err := s.walkFiles(ctx, dir, 3, func(parts []string, fi storagedriver.FileInfo) error {
		if parts[2] != linkFile {
			return nil
		}
		d, ok := digestFromDir(parts[0], parts[1])
		if !ok {
			s.log.Debug("store: skipping link with an invalid digest path", "path", fi.Path())
			return nil
		}
		fnErr = fn(d)
		return fnErr
	})
	if fnErr != nil {
		return true, fnErr
	}
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return true, err
	}
	if !visited {
		// Object stores have no directories: a walk of a prefix that
		// holds nothing succeeds without visiting anything.
		return s.exists(ctx, dir)
	}
	return true, nil
}

// exists reports whether dir holds anything (a directory without files is
// absent on object stores).
func (s *Driver) exists(ctx context.Context, dir string) (bool, error) {
	if _, err := s.d.Stat(ctx, dir); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("store: stat %s: %w", dir, err)
	}
	return true, nil
}

// TagHistory implements Store. It gives ErrNotFound if the tag has no
// history index.
func (s *Driver) TagHistory(ctx context.Context, repo, tag string) ([]digest.Digest, error) {
	dir, err := tagIndexDir(repo, tag)
	if err != nil {
		return nil, err
	}
	var out []digest.Digest
	found, err := s.walkLinks(ctx, dir, func(d digest.Digest) error {
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: history of %s:%s", ErrNotFound, repo, tag)
	}
	slices.Sort(out)
	return out, nil
}

// Revisions implements Store: one walk of _manifests/revisions (a single
// paginated listing on object stores).
func (s *Driver) Revisions(ctx context.Context, repo string, fn func(d digest.Digest) error) error {
	dir, err := revisionsDir(repo)
	if err != nil {
		return err
	}
	_, err = s.walkLinks(ctx, dir, fn)
	return err
}

// LayerLinks implements Store: one walk of _layers.
func (s *Driver) LayerLinks(ctx context.Context, repo string, fn func(d digest.Digest) error) error {
	dir, err := layersDir(repo)
	if err != nil {
		return err
	}
	_, err = s.walkLinks(ctx, dir, fn)
	return err
}

// Blobs implements Store: BlobSpans, one digest at a time.
func (s *Driver) Blobs(ctx context.Context, fn func(d digest.Digest) error) error {
	return s.BlobSpans(ctx, func(_ digest.Algorithm, _, _, _ string, ds []digest.Digest) error {
		for _, d := range ds {
			if err := fn(d); err != nil {
				return err
			}
		}
		return nil
	})
}

// StatBlob implements Store.
func (s *Driver) StatBlob(ctx context.Context, d digest.Digest) (int64, error) {
	p, err := blobDataPath(d)
	if err != nil {
		return 0, err
	}
	fi, err := s.d.Stat(ctx, p)
	if err != nil {
		if isNotFound(err) {
			return 0, fmt.Errorf("%w: blob %s", ErrNotFound, d)
		}
		return 0, fmt.Errorf("store: stat blob %s: %w", d, err)
	}
	if fi.IsDir() {
		return 0, fmt.Errorf("%w: blob %s", ErrNotFound, d)
	}
	return fi.Size(), nil
}

// LinkModTime returns when the link file of a manifest revision or a layer
// link was last written: a manifest PUT rewrites its revision link, a blob
// upload or mount its layer link. It gives ErrNotFound for a missing link.
func (s *Driver) LinkModTime(ctx context.Context, n events.NodeRef) (time.Time, error) {
	var dir string
	var err error
	switch n.Kind {
	case events.NodeManifest:
		dir, err = revisionDir(n.Repo, n.Digest)
	case events.NodeLayer:
		dir, err = layerDir(n.Repo, n.Digest)
	default:
		return time.Time{}, fmt.Errorf("%w: %s has no link file", ErrInvalid, n)
	}
	if err != nil {
		return time.Time{}, err
	}
	if s.dirs != nil {
		// On the filesystem, the stat the driver's Stat makes, without
		// its path checks and wrappers: the storage check reads the link
		// of every candidate of a round.
		fi, err := os.Stat(s.dirs.osPath(dir + "/" + linkFile))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return time.Time{}, fmt.Errorf("%w: %s", ErrNotFound, n)
		case err != nil:
			return time.Time{}, fmt.Errorf("store: stat %s: %w", n, err)
		}
		return fi.ModTime(), nil
	}
	fi, err := s.d.Stat(ctx, dir+"/"+linkFile)
	if err != nil {
		if isNotFound(err) {
			return time.Time{}, fmt.Errorf("%w: %s", ErrNotFound, n)
		}
		return time.Time{}, fmt.Errorf("store: stat %s: %w", n, err)
	}
	return fi.ModTime(), nil
}

// ReadBlob implements Store.
func (s *Driver) ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	size, err := s.StatBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	if size > max {
		return nil, fmt.Errorf("%w: blob %s has %d bytes, limit %d", ErrTooLarge, d, size, max)
	}
	p, _ := blobDataPath(d)
	r, err := s.d.Reader(ctx, p, 0)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: blob %s", ErrNotFound, d)
		}
		return nil, fmt.Errorf("store: read blob %s: %w", d, err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("store: read blob %s: %w", d, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: blob %s is over the limit %d", ErrTooLarge, d, max)
	}
	return b, nil
}

// TagIndex calls fn for every tag of repo, sorted by name, with whether
// it has a current link and the digests of its history index, sorted. It
// reads no link: one walk of _manifests/tags (a paginated listing on
// object stores, a thousand keys a request). Distribution writes a tag's
// index entry before its current link, so a current link points at a
// digest of the tag's history; TagCurrent reads it where that matters.
func (s *Driver) TagIndex(ctx context.Context, repo string, fn func(tag string, current bool, history []digest.Digest) error) error {
	dir, err := repoPath(repo, "_manifests", "tags")
	if err != nil {
		return err
	}
	type tagInfo struct {
		current bool
		history []digest.Digest
	}
	tags := map[string]*tagInfo{}
	err = s.walk(ctx, dir, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			return nil
		}
		rel, ok := strings.CutPrefix(path.Clean(fi.Path()), dir+"/")
		if !ok {
			return nil
		}
		parts := strings.Split(rel, "/")
		if checkTag(parts[0]) != nil {
			return nil
		}
		t := tags[parts[0]]
		if t == nil {
			t = &tagInfo{}
			tags[parts[0]] = t
		}
		switch {
		case len(parts) == 3 && parts[1] == "current" && parts[2] == linkFile:
			t.current = true
		case len(parts) == 5 && parts[1] == "index" && parts[4] == linkFile:
			if d, ok := digestFromDir(parts[2], parts[3]); ok {
				t.history = append(t.history, d)
			}
		}
		return nil
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("store: walk %s: %w", dir, err)
	}
	names := make([]string, 0, len(tags))
	for name := range tags {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t := tags[name]
		slices.Sort(t.history)
		if err := fn(name, t.current, t.history); err != nil {
			return err
		}
	}
	return nil
}

// TagCurrent reads a tag's current link: ErrNotFound when it has none.
func (s *Driver) TagCurrent(ctx context.Context, repo, tag string) (digest.Digest, error) {
	p, err := tagCurrentLink(repo, tag)
	if err != nil {
		return "", err
	}
	d, found, err := s.readLink(ctx, p)
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("%w: tag %s:%s", ErrNotFound, repo, tag)
	}
	return d, nil
}
