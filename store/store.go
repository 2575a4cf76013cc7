// Package store is the registry storage that the collector and the
// reconciler act on: a small interface over the objects of the CNCF
// Distribution storage layout (tags, manifest revisions, repository layer
// links, blob data), and its implementation, Driver, over Distribution's own
// storage drivers (filesystem, s3-aws, gcs, azure). The drivers are
// registered by the binary (cmd/refgc) or by the test that uses one, not
// here.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the storage.
//
// Invariants:
//   - Every storage path is built only from a repository name, tag and
//     digest that passed events.ValidateRepo, events.ValidateTag and
//     events.ValidateDigest, and is checked once more to be clean and under
//     the layout root before the driver sees it. An invalid name never
//     reaches the driver: the call fails with ErrInvalid first.
//   - Paths follow Distribution v3.1.2's layout exactly, under
//     /docker/registry/v2 of the driver's root; link files hold the digest
//     string ("sha256:<hex>") with no newline, as Distribution writes them.
//   - Unlinks and restores are idempotent: deleting what is absent, or
//     writing a link that is already there, succeeds. A crash between two
//     steps of one operation is finished by calling it again.
//   - Reads never modify storage. Walks call their callback from one
//     goroutine at a time, in no particular order; a callback error stops
//     the walk and is returned as is. Objects whose names do not validate
//     (which the registry itself cannot serve) are skipped, never reported.
//   - Empty directories (the filesystem driver's only: EmptyDirs) are
//     removed with rmdir alone, never with the driver's Delete (which is
//     os.RemoveAll there): a directory that holds anything stays.
//   - A Driver is safe for concurrent use.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned when the object is not in storage (StatBlob,
// ReadBlob, TagHistory, LinkModTime, and the restores when the blob data is
// gone). It matches fs.ErrNotExist, so that callers need not import store.
var ErrNotFound = fmt.Errorf("store: not found: %w", fs.ErrNotExist)

// ErrInvalid is returned, before any storage access, for a repository name,
// tag or digest that does not validate.
var ErrInvalid = errors.New("store: invalid name or digest")

// ErrTooLarge is returned by ReadBlob for a blob larger than the limit.
var ErrTooLarge = errors.New("store: blob too large")

// ErrNotEmpty is returned by DeleteRepository while the repository still
// holds a tag, a revision, a layer link or an upload.
var ErrNotEmpty = errors.New("store: repository not empty")

// ErrCorrupt is returned when storage holds a link whose content is not a
// valid digest. Walks stop on it rather than guess.
var ErrCorrupt = errors.New("store: malformed link in storage")

// Store is the registry storage as the collector and the reconciler see it.
type Store interface {
	// DeleteTag removes <repo>/_manifests/tags/<tag>/ (current link and history).
	DeleteTag(ctx context.Context, repo, tag string) error
	// DeleteRevision removes _manifests/revisions/<alg>/<hex>/ and, for every
	// tag in tags, that tag's history entry _manifests/tags/<tag>/index/<alg>/<hex>/.
	// It does not touch any tag's current link.
	DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error
	// DeleteLayerLink removes <repo>/_layers/<alg>/<hex>/.
	DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error
	// PurgeBlob removes blobs/<alg>/<2 hex>/<hex>/, the data itself.
	PurgeBlob(ctx context.Context, d digest.Digest) error
	// DeleteRepository removes the repository's own _manifests, _layers and
	// _uploads once it holds no tag, revision, layer link or upload, and
	// gives ErrNotEmpty otherwise. Repositories nested under its name
	// (repo/sub) are never touched.
	DeleteRepository(ctx context.Context, repo string) error

	// LinkTag writes the tag's history entry then its current link, as the
	// registry does on a push by tag.
	LinkTag(ctx context.Context, repo, tag string, d digest.Digest) error
	// LinkRevision writes _manifests/revisions/<alg>/<hex>/link.
	LinkRevision(ctx context.Context, repo string, d digest.Digest) error
	// LinkLayer writes _layers/<alg>/<hex>/link.
	LinkLayer(ctx context.Context, repo string, d digest.Digest) error

	// Repositories calls fn for every repository (a directory holding
	// _manifests), with nested names such as a/b/c.
	Repositories(ctx context.Context, fn func(repo string) error) error
	// Tags calls fn for every tag of repo that has a current link.
	Tags(ctx context.Context, repo string, fn func(tag string, current digest.Digest) error) error
	// TagHistory lists the digests in the tag's history index, sorted.
	TagHistory(ctx context.Context, repo, tag string) ([]digest.Digest, error)
	// Revisions calls fn for every manifest revision link of repo.
	Revisions(ctx context.Context, repo string, fn func(d digest.Digest) error) error
	// LayerLinks calls fn for every layer link of repo.
	LayerLinks(ctx context.Context, repo string, fn func(d digest.Digest) error) error
	// Blobs calls fn for every blob that has data.
	Blobs(ctx context.Context, fn func(d digest.Digest) error) error
	// StatBlob returns the size of the blob's data, or ErrNotFound.
	StatBlob(ctx context.Context, d digest.Digest) (size int64, err error)
	// ReadBlob returns the blob's bytes (a manifest), or ErrTooLarge if it
	// is larger than max bytes, or ErrNotFound.
	ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
}

var _ Store = (*Driver)(nil)
