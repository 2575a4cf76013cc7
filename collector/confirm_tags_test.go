package collector_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/store"
)

// TestStorageCheckTags: a tag in storage that the projection never heard
// of holds its revision, whether the tag has the history entry the
// registry writes first or only a current link; a tag whose history holds
// the revision but that has moved on does not.
func TestStorageCheckTags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		write   func(w *world, m, other events.Descriptor)
		refused bool
	}{
		{"tagged", func(w *world, m, _ events.Descriptor) { w.linkTag("app", "late", m.Digest) }, true},
		{"current link only", func(w *world, m, _ events.Descriptor) {
			w.writeLink(m.Digest, w.repoDir("app"), "_manifests", "tags", "odd", "current", "link")
		}, true},
		{"moved on", func(w *world, m, other events.Descriptor) {
			w.linkTag("app", "moved", m.Digest)
			w.linkTag("app", "moved", other.Digest)
		}, false},
		{"other tags only", func(w *world, _, other events.Descriptor) { w.linkTag("app", "other", other.Digest) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 4)
			r := rand.New(rand.NewPCG(1, 2))
			conf := w.pushBlob(r, "app", mtConf, 16)
			m := w.putManifest("app", "", []events.Descriptor{conf, w.pushBlob(r, "app", mtLayer, 64)}, nil, nil)
			other := w.putManifest("app", "keep", []events.Descriptor{conf, w.pushBlob(r, "app", mtLayer, 64)}, nil, nil)
			w.clock = w.clock.Add(2 * testGrace)
			tc.write(w, m, other)
			rep := w.pass()
			unlinked := false
			for _, rm := range rep.Removed {
				unlinked = unlinked || rm.Node == (events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m.Digest})
			}
			if unlinked == tc.refused {
				t.Fatalf("revision unlinked %v, want refused %v: %+v", unlinked, tc.refused, rep)
			}
			if tc.refused && rep.Refused == 0 {
				t.Fatalf("no refusal: %+v", rep)
			}
		})
	}
}

// The store reads tags as the storage check prefers.
var _ collector.TagIndexReader = (*store.Driver)(nil)

// cutRevisions is the store with a revision listing that fails with an
// error wrapping "not exist", as a listing cut short by a directory
// removed under it could.
type cutRevisions struct{ *store.Driver }

func (c cutRevisions) Revisions(context.Context, string, func(digest.Digest) error) error {
	return fmt.Errorf("listing cut short: %w", fs.ErrNotExist)
}

// TestStorageCheckRefusesOnCutListing: a revision listing that fails,
// even with an error wrapping "not exist", is not taken for an empty one:
// the repository's candidates are refused.
func TestStorageCheckRefusesOnCutListing(t *testing.T) {
	w := newWorld(t, 4)
	r := rand.New(rand.NewPCG(3, 4))
	m := w.putManifest("app", "", []events.Descriptor{w.pushBlob(r, "app", mtConf, 16), w.pushBlob(r, "app", mtLayer, 64)}, nil, nil)
	w.clock = w.clock.Add(2 * testGrace)
	col, err := collector.New(collector.Config{Projection: w.proj, Storage: w.store, Reader: cutRevisions{w.store},
		Log: w.log, Now: func() time.Time { return w.clock }})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := col.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, rm := range rep.Removed {
		if rm.Node.Kind != events.NodeBlob && rm.Node.Repo == "app" {
			t.Fatalf("%s removed on a cut listing: %+v", rm.Node, rep)
		}
	}
	if rep.Refused == 0 {
		t.Fatalf("nothing refused: %+v", rep)
	}
	if _, err := w.store.StatBlob(context.Background(), m.Digest); err != nil {
		t.Fatalf("manifest data gone: %v", err)
	}
}

// laterListingsCut is the store with every revision listing of a
// repository after its first failing with an error wrapping "not exist":
// a reconcile's walk lists each repository once, so what fails is its
// confirmation.
type laterListingsCut struct {
	*store.Driver
	mu    sync.Mutex
	calls map[string]int
}

func (c *laterListingsCut) Revisions(ctx context.Context, repo string, fn func(digest.Digest) error) error {
	c.mu.Lock()
	c.calls[repo]++
	n := c.calls[repo]
	c.mu.Unlock()
	if n > 1 {
		return fmt.Errorf("listing cut short: %w", fs.ErrNotExist)
	}
	return c.Driver.Revisions(ctx, repo, fn)
}

// TestReconcileConfirmRefusesCutListing: the reconcile's confirmation of
// its fixes does not take a listing that fails, even with an error
// wrapping "not exist", for an empty one: the pass fails and publishes
// nothing.
func TestReconcileConfirmRefusesCutListing(t *testing.T) {
	w := newWorld(t, 4)
	r := rand.New(rand.NewPCG(5, 6))
	w.mute = true // in storage only: the projection never hears of it
	m := w.putManifest("dark", "", []events.Descriptor{w.pushBlob(r, "dark", mtConf, 16), w.pushBlob(r, "dark", mtLayer, 64)}, nil, nil)
	w.mute = false
	cut := &laterListingsCut{Driver: w.store, calls: map[string]int{}}
	rec, err := reconcile.New(reconcile.Config{Projection: w.proj, Store: cut, Log: w.log, Now: func() time.Time { return w.clock }})
	if err != nil {
		t.Fatal(err)
	}
	d, err := rec.Reconcile(context.Background(), true)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reconcile on a cut confirmation: %v, %s", err, d)
	}
	if cut.calls["dark"] < 2 {
		t.Fatalf("the confirmation did not list dark's revisions: %v", cut.calls)
	}
	ref := events.NodeRef{Kind: events.NodeManifest, Repo: "dark", Digest: m.Digest}
	if _, ok, err := w.proj.Get(ref); err != nil || ok {
		t.Fatalf("%s published on a cut confirmation: %v %v", ref, ok, err)
	}
}
