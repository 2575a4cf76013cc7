//go:build unix

package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestRemoveObjectRacingRewrite: a link the registry writes again between
// the store's unlink and its rmdir stays, and the removal fails (as
// os.RemoveAll fails in the same window), instead of falling back to
// removing it.
func TestRemoveObjectRacingRewrite(t *testing.T) {
	ctx := context.Background()
	var link string
	d := digest.FromString("layer")
	s, err := New(ctx, "filesystem", map[string]any{"rootdirectory": t.TempDir()},
		WithRmdirHook(func(string) { must(t, os.WriteFile(link, []byte(d.String()), 0o644)) }))
	must(t, err)
	putBlob(t, s, "layer")
	must(t, s.LinkLayer(ctx, "r", d))
	p, _ := layerDir("r", d)
	link = filepath.Join(s.dirs.osPath(p), linkFile)
	err = s.DeleteLayerLink(ctx, "r", d)
	if !errors.Is(err, errRewritten) {
		t.Errorf("DeleteLayerLink: %v, want errRewritten", err)
	}
	if _, err := os.Stat(link); err != nil {
		t.Errorf("the link written again is gone: %v", err)
	}
}
