package collector_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// landingWatch holds a round's commit (its publish of Collected events)
// until the next round has listed storage for its storage check (or begun
// a purge round), and counts the storage operations that run while a
// commit is under way.
type landingWatch struct {
	*store.Driver
	log eventlog.Log

	mu        sync.Mutex
	committed map[events.NodeRef]int // Collected events published, by node
	removed   map[events.NodeRef]int // storage operations, by node
	inCommit  bool
	pending   bool          // removals done whose commit has not begun
	held      chan struct{} // the held commit's: closed by release
	next      bool          // released since the last commit began
	beside    int           // storage operations and checks beside a commit
	violation string
}

func (w *landingWatch) Publish(ctx context.Context, evs []events.Event) error {
	collected := len(evs) > 0 && evs[0].Kind == events.Collected
	if !collected {
		return w.log.Publish(ctx, evs)
	}
	w.mu.Lock()
	w.inCommit, w.pending = true, false
	held := make(chan struct{})
	if w.next {
		close(held) // the next round went on before this commit began
		w.next = false
	} else {
		w.held = held
	}
	for _, e := range evs {
		w.committed[e.Collected.Node]++
	}
	w.mu.Unlock()
	// Held until the next round lists a repository for its storage check,
	// or a purge round begins (its barrier): each comes before that
	// round's removals, after which it waits for this commit to land.
	select {
	case <-held:
	case <-ctx.Done():
	case <-time.After(time.Minute):
		w.mu.Lock()
		w.violation = "a held commit was never released"
		w.mu.Unlock()
	}
	err := w.log.Publish(ctx, evs)
	w.mu.Lock()
	w.inCommit = false
	w.mu.Unlock()
	return err
}

func (w *landingWatch) CatchUp(ctx context.Context) (uint64, error) { return w.log.CatchUp(ctx) }

// release lets a held commit go on; check says a storage check runs
// beside it.
func (w *landingWatch) release(check bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held == nil {
		w.next = true
		// A round's removals are done and their commit has not begun:
		// this storage check runs beside it.
		if w.pending && check {
			w.beside++
		}
		return
	}
	if check {
		w.beside++
	}
	close(w.held)
	w.held = nil
}

func (w *landingWatch) Barrier(context.Context) error {
	w.release(false)
	return nil
}

func (w *landingWatch) Revisions(ctx context.Context, repo string, fn func(digest.Digest) error) error {
	w.release(true)
	return w.Driver.Revisions(ctx, repo, fn)
}

func (w *landingWatch) op(n events.NodeRef) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removed[n]++
	w.pending = true
	if w.inCommit {
		w.beside++
	}
}

func (w *landingWatch) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	w.op(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d})
	return w.Driver.DeleteRevision(ctx, repo, d, tags)
}

func (w *landingWatch) DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error {
	w.op(events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: d})
	return w.Driver.DeleteLayerLink(ctx, repo, d)
}

func (w *landingWatch) PurgeBlob(ctx context.Context, d digest.Digest) error {
	w.op(events.NodeRef{Kind: events.NodeBlob, Digest: d})
	return w.Driver.PurgeBlob(ctx, d)
}

// TestCommitBesideTheNextRound: a round's commit runs beside the next
// round's choice, storage check and removals; no node is removed or
// committed twice, nothing reachable is lost, and the pass ends with every
// commit landed.
func TestCommitBesideTheNextRound(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	for range 3 {
		e.reg.PushRandom(t, "app:v1", 2) // each push leaves the one before as garbage
	}
	e.reg.PushRandom(t, "other:v1", 2)
	e.reg.DeleteTag(t, "other", "v1")
	e.settle()
	before, err := regtest.Reachable(e.reg.Root, false)
	if err != nil {
		t.Fatal(err)
	}
	w := &landingWatch{Driver: e.store, log: e.log,
		committed: map[events.NodeRef]int{}, removed: map[events.NodeRef]int{}}
	col, err := collector.New(collector.Config{Projection: e.proj, Storage: w, Reader: w, Log: w,
		Now: e.now, Concurrency: 2, BatchSize: 2, Reconcile: e.reconcile, Barrier: w.Barrier})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []time.Duration{2 * testGrace, testRetention + testGrace} {
		e.advance(step)
		if _, err := col.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		inCommit := w.inCommit
		w.mu.Unlock()
		if inCommit {
			t.Fatal("a pass returned with a commit under way")
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.violation != "" {
		t.Error(w.violation)
	}
	if w.beside == 0 {
		t.Error("no round checked or removed beside the last round's commit")
	}
	for n, k := range w.removed {
		if k != 1 || w.committed[n] != 1 {
			t.Errorf("%s: removed %d times, committed %d times", n, k, w.committed[n])
		}
	}
	if len(w.removed) == 0 {
		t.Fatal("nothing removed")
	}
	e.verifyAgainst(before)
	e.mustPull("app:v1")
}
