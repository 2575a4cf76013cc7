package collector

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// MaxManifestBytes bounds a manifest read from storage.
const MaxManifestBytes = 4 << 20

// StoreManifestReader reads manifests straight from registry storage, for
// the webhook's enrichment (distribution.ManifestReader) when refgc shares the
// registry's storage. The media type is left to the manifest's own field.
type StoreManifestReader struct {
	Store interface {
		ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
	}
}

// ReadManifest returns the manifest's bytes.
func (r StoreManifestReader) ReadManifest(ctx context.Context, _ string, d digest.Digest) ([]byte, string, error) {
	b, err := r.Store.ReadBlob(ctx, d, MaxManifestBytes)
	return b, "", err
}

// MaxConfigBytes bounds an image config read for its labels.
const MaxConfigBytes = 1 << 20

// ReadConfig returns an image config's bytes (distribution.ConfigReader).
func (r StoreManifestReader) ReadConfig(ctx context.Context, _ string, d digest.Digest) ([]byte, error) {
	return r.Store.ReadBlob(ctx, d, MaxConfigBytes)
}
