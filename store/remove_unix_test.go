//go:build unix

package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestRemoveObjectRacingRewrite: a link the registry writes again between
// the store's unlink and its rmdir stays, and the removal fails (as
// os.RemoveAll fails in the same window), instead of falling back to
// removing it.
func TestRemoveObjectRacingRewrite(t *testing.T) {
	ctx := context.Background()
	s := newFS(t, t.TempDir())
	d := putBlob(t, s, "layer")
	must(t, s.LinkLayer(ctx, "r", d))
	p, _ := layerDir("r", d)
	link := filepath.Join(s.dirs.osPath(p), linkFile)
	rmdirObjectHook = func(string) { must(t, os.WriteFile(link, []byte(d.String()), 0o644)) }
	t.Cleanup(func() { rmdirObjectHook = nil })
	err := s.DeleteLayerLink(ctx, "r", d)
	if !errors.Is(err, errRewritten) {
		t.Errorf("DeleteLayerLink: %v, want errRewritten", err)
	}
	if _, err := os.Stat(link); err != nil {
		t.Errorf("the link written again is gone: %v", err)
	}
}
