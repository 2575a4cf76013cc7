package collector_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// raceWatch tags the other of two garbage manifests again through the
// registry, and waits until the projection applied it, while the storage
// operation of the first runs: after the round's re-check, before the
// other's removal.
type raceWatch struct {
	*store.Driver
	e       *env
	garbage map[digest.Digest]v1.Image

	mu      sync.Mutex
	tagged  digest.Digest
	removed []digest.Digest
}

func (w *raceWatch) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removed = append(w.removed, d)
	if w.tagged == "" {
		for other, img := range w.garbage {
			if other != d {
				w.tagged = other
				w.e.reg.Push(w.e.t, "app:again", img)
				w.e.settle()
			}
		}
	}
	return w.Driver.DeleteRevision(ctx, repo, d, tags)
}

// TestLastLookStopsARacedRemoval: a manifest tagged again after the
// round's re-check, its notification applied before its removal starts,
// is not removed at all (the last look), rather than removed and restored.
func TestLastLookStopsARacedRemoval(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	w := &raceWatch{Driver: e.store, e: e, garbage: map[digest.Digest]v1.Image{}}
	for range 2 {
		img := e.reg.PushRandom(t, "app:v1", 1)
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		w.garbage[digest.Digest(d.String())] = img
	}
	e.reg.PushRandom(t, "app:v1", 1) // the two before are garbage now
	e.settle()
	reg := prometheus.NewRegistry()
	col := e.newCollector(collector.Config{Storage: w, Concurrency: 1, BatchSize: 8, Registerer: reg})
	e.advance(2 * testGrace)
	rep, err := col.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tagged == "" || len(w.removed) != 1 || w.removed[0] == w.tagged {
		t.Fatalf("removed %v, tagged again %s: want the other one removed alone", w.removed, w.tagged)
	}
	if rep.Unlinked != 1 || rep.Restored != 0 {
		t.Errorf("unlinked %d, restored %d: want 1 and 0", rep.Unlinked, rep.Restored)
	}
	if n, err := testutilCount(reg, "refgc_collector_refused_total", "reason", collector.RefuseLastLook); err != nil || n != 1 {
		t.Errorf("refused by the last look: %v (%v), want 1", n, err)
	}
	if left, err := e.proj.Intents(); err != nil || len(left) > 0 {
		t.Errorf("%d intents left (%v)", len(left), err)
	}
	e.mustPull("app:again")
	e.mustPull("app:v1")
}

// failingRevisions fails the removal of one manifest revision while fail
// is set.
type failingRevisions struct {
	*store.Driver
	mu   sync.Mutex
	fail digest.Digest
}

func (f *failingRevisions) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	f.mu.Lock()
	fail := f.fail == d
	f.mu.Unlock()
	if fail {
		return errors.New("injected storage failure")
	}
	return f.Driver.DeleteRevision(ctx, repo, d, tags)
}

// TestFailedRemovalWaitsForTheNextPass: a storage operation that fails
// leaves its one intent for the next pass, which tries it again (and no
// later round of the pass records another); the rest of the garbage goes,
// and the failed one goes once the storage works.
func TestFailedRemovalWaitsForTheNextPass(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	bad := e.reg.PushRandom(t, "app:v1", 1)
	var garbage []v1.Image
	for i := range 3 {
		img := e.reg.PushRandom(t, "app:v1", 1)
		if i < 2 {
			garbage = append(garbage, img)
		}
	}
	e.settle()
	d, err := bad.Digest()
	if err != nil {
		t.Fatal(err)
	}
	badRef := manifestRef("app", d)
	f := &failingRevisions{Driver: e.store, fail: badRef.Digest}
	col := e.newCollector(collector.Config{Storage: f, Concurrency: 2, BatchSize: 1, Logger: quietLogger})
	for pass := range 3 {
		e.advance(2 * testGrace)
		rep, err := col.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rep.Errors != 1 {
			t.Errorf("pass %d: %d errors, want 1", pass, rep.Errors)
		}
		left, err := e.proj.Intents()
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 1 || left[0].Node != badRef {
			t.Fatalf("pass %d: intents left %v, want the failed removal's alone", pass, left)
		}
	}
	// The rest went, one a round, the failing one chosen no more.
	for _, img := range garbage {
		e.mustNotFind("app", regtest.Digest(t, img).String())
	}
	f.mu.Lock()
	f.fail = ""
	f.mu.Unlock()
	e.collectAndVerify()
	if left, err := e.proj.Intents(); err != nil || len(left) > 0 {
		t.Errorf("%d intents left (%v)", len(left), err)
	}
	e.mustPull("app:v1")
}

// roundCounter counts the storage operations of each unlink round: a
// pass's purge round (its barrier) comes after each unlink round.
type roundCounter struct {
	*store.Driver
	mu     sync.Mutex
	ops    int
	rounds []int
}

func (r *roundCounter) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	r.mu.Lock()
	r.ops++
	r.mu.Unlock()
	return r.Driver.DeleteRevision(ctx, repo, d, tags)
}

func (r *roundCounter) Barrier(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops > 0 {
		r.rounds = append(r.rounds, r.ops)
	}
	r.ops = 0
	return nil
}

// TestRoundsFollowTheRemovalRate: the first round takes the first size;
// then, unlimited, rounds take what the storage removes in the round
// time (here the batch), and under a rate limit what the limit lets go
// (here the floor).
func TestRoundsFollowTheRemovalRate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rateLimit float64
		roundTime time.Duration
		want      []int
	}{
		{"unlimited", 0, time.Hour, []int{128, 128, 44}},
		{"rate-limited", 1000, 10 * time.Millisecond, []int{128, 64, 64, 44}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 4)
			w.garbage(rand.New(rand.NewPCG(1, 2)), 300)
			r := &roundCounter{Driver: w.store}
			col, err := collector.New(collector.Config{Projection: w.proj, Storage: r, Log: w.log,
				Now: func() time.Time { return w.clock }, Concurrency: 4, BatchSize: 128, RoundTime: tc.roundTime,
				RateLimit: tc.rateLimit, Barrier: r.Barrier, Reconcile: func(ctx context.Context, repos []string) error {
					_, err := w.rec.ReconcileRepos(ctx, repos)
					return err
				}})
			if err != nil {
				t.Fatal(err)
			}
			w.clock = w.clock.Add(testRetention + testGrace)
			rep, err := col.Pass(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if rep.Unlinked < 300 || !slices.Equal(r.rounds, tc.want) {
				t.Errorf("%d unlinked, revisions removed by round %v, want %v", rep.Unlinked, r.rounds, tc.want)
			}
		})
	}
}

// lateReader lets the held notifications through, and waits until the
// projection applied them, at the storage check's first read: after
// recover judged its intents, before their storage operations.
type lateReader struct {
	collector.StorageReader
	e    *env
	once sync.Once
}

func (r *lateReader) LinkModTime(ctx context.Context, n events.NodeRef) (time.Time, error) {
	r.once.Do(func() { r.e.reg.Faults.Release(); r.e.settle() })
	return r.StorageReader.LinkModTime(ctx, n)
}

// TestRecoveryUndoesWhatRacedAfterACrash: a process unlinked a layer link
// and died before its Collected event; a push that uses the layer was done
// before the unlink, its notification late. Recovery redoes the intent;
// the notification arrives before the redo: the removal raced, and recovery
// undoes it (the link written back), not passes it over as a round's last
// look does, since its operation may have run.
func TestRecoveryUndoesWhatRacedAfterACrash(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	base := regtest.RandomImage(t, 1)
	e.reg.PushByDigest(t, "app", base) // untagged: garbage
	e.settle()
	e.advance(2 * testGrace)
	e.pass() // the manifest goes; its layer link waits out the grace
	e.advance(2 * testGrace)
	ls, err := base.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := ls[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	layer := events.NodeRef{Kind: events.NodeLayer, Repo: "app", Digest: digest.Digest(ld.String())}
	// A push that uses the layer; its notifications are late.
	e.reg.Faults.Where(regtest.On("", "app")).Hold()
	e.reg.Push(t, "app:v3", regtest.SharingImage(t, base, 1, 0))
	e.settle()
	// The doomed process: intent, unlink, crash.
	if _, err := e.proj.BeginCollect("crashed-1", layer, e.now(), 0); err != nil {
		t.Fatal(err)
	}
	if err := e.store.DeleteLayerLink(context.Background(), "app", layer.Digest); err != nil {
		t.Fatal(err)
	}
	col := e.newCollector(collector.Config{Reader: &lateReader{StorageReader: e.store, e: e}})
	rep, err := col.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Restored != 1 {
		t.Errorf("restored %d, want the raced removal", rep.Restored)
	}
	if left, err := e.proj.Intents(); err != nil || len(left) > 0 {
		t.Errorf("%d intents left (%v)", len(left), err)
	}
	e.mustPull("app:v3")
}
