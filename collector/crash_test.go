package collector_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// errCrashed is what every call of a crashed process returns.
var errCrashed = errors.New("test: process crashed")

// crashPoint names where a collector process dies.
type crashPoint int

const (
	// beforeStorage: the intent is recorded, the storage operation never happens.
	beforeStorage crashPoint = iota
	// afterStorage: the storage operation is done, the Collected event is never published.
	afterStorage
	// publishFails: the Collected event is not appended to the log.
	publishFails
	// publishLost: the log acknowledges the event but the projection never
	// applies it (the collector goes on, believing it did).
	publishLost
	// afterApply: the event is applied, the process dies before dropping the intent.
	afterApply
)

func (p crashPoint) String() string {
	return [...]string{"before storage", "after storage", "publish fails", "published but lost", "after apply"}[p]
}

// crasher wraps the Storage and the Log of a collector and kills the
// process at one point, the first time an operation on a node of the
// chosen kind reaches it. From then on every call fails, as if the process
// were gone (except for publishLost, which only drops the event).
type crasher struct {
	st    collector.Storage
	log   eventlog.Log
	kind  events.NodeKind
	point crashPoint

	mu    sync.Mutex
	fired bool
	dead  bool
	// applied are the intents of the Collected events applied right
	// before an afterApply crash.
	applied []string
}

func (c *crasher) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

func (c *crasher) hasFired() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fired
}

// hit reports whether the crash fires now, for an operation at point p on
// a node of kind k.
func (c *crasher) hit(p crashPoint, k events.NodeKind) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fired || p != c.point || k != c.kind {
		return false
	}
	c.fired = true
	if p != publishLost {
		c.dead = true
	}
	return true
}

func (c *crasher) storageOp(k events.NodeKind, op func() error) error {
	if c.isDead() || c.hit(beforeStorage, k) {
		return errCrashed
	}
	if err := op(); err != nil {
		return err
	}
	if c.hit(afterStorage, k) {
		return errCrashed
	}
	return nil
}

func (c *crasher) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	return c.storageOp(events.NodeManifest, func() error { return c.st.DeleteRevision(ctx, repo, d, tags) })
}

func (c *crasher) DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error {
	return c.storageOp(events.NodeLayer, func() error { return c.st.DeleteLayerLink(ctx, repo, d) })
}

func (c *crasher) PurgeBlob(ctx context.Context, d digest.Digest) error {
	return c.storageOp(events.NodeBlob, func() error { return c.st.PurgeBlob(ctx, d) })
}

func (c *crasher) LinkTag(ctx context.Context, repo, tag string, d digest.Digest) error {
	if c.isDead() {
		return errCrashed
	}
	return c.st.LinkTag(ctx, repo, tag, d)
}

func (c *crasher) LinkRevision(ctx context.Context, repo string, d digest.Digest) error {
	if c.isDead() {
		return errCrashed
	}
	return c.st.LinkRevision(ctx, repo, d)
}

func (c *crasher) LinkLayer(ctx context.Context, repo string, d digest.Digest) error {
	if c.isDead() {
		return errCrashed
	}
	return c.st.LinkLayer(ctx, repo, d)
}

func (c *crasher) StatBlob(ctx context.Context, d digest.Digest) (int64, error) {
	if c.isDead() {
		return 0, errCrashed
	}
	return c.st.StatBlob(ctx, d)
}

// Publish crashes at publishFails, publishLost and afterApply when the
// batch holds a Collected event of the chosen kind.
func (c *crasher) Publish(ctx context.Context, evs []events.Event) error {
	if c.isDead() {
		return errCrashed
	}
	var kind events.NodeKind
	for _, e := range evs {
		if e.Kind == events.Collected && e.Collected.Node.Kind == c.kind {
			kind = c.kind
		}
	}
	if c.hit(publishFails, kind) {
		return errCrashed
	}
	if c.hit(publishLost, kind) {
		return nil
	}
	if err := c.log.Publish(ctx, evs); err != nil {
		return err
	}
	if c.hit(afterApply, kind) {
		c.mu.Lock()
		for _, e := range evs {
			if e.Kind == events.Collected {
				c.applied = append(c.applied, e.Collected.Intent)
			}
		}
		c.mu.Unlock()
		return errCrashed
	}
	return nil
}

func (c *crasher) CatchUp(ctx context.Context) (uint64, error) {
	if c.isDead() {
		return 0, errCrashed
	}
	return c.log.CatchUp(ctx)
}

// reopen closes the projection file and opens it again, as a restarted
// process would, and points the webhook's sink and a new collector at it.
func (e *env) reopen() {
	e.t.Helper()
	path, opts := e.proj.Path(), e.proj.Options()
	if err := e.proj.Close(); err != nil {
		e.t.Fatal(err)
	}
	proj, err := refcount.Open(path, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { proj.Close() })
	e.proj = proj
	e.log.P = proj
	e.rec, err = reconcile.New(reconcile.Config{Projection: proj, Store: e.store, Log: e.log, Now: e.now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.col, err = collector.New(collector.Config{Projection: proj, Storage: e.store, Log: e.log,
		Now: e.now, Concurrency: 4, Reconcile: e.reconcile})
	if err != nil {
		e.t.Fatal(err)
	}
}

// verifyAgainst drains and checks storage against the reachable set
// computed before anything was collected: nothing reachable lost, no
// garbage left, projection consistent, no intent left.
func (e *env) verifyAgainst(before regtest.Sets) {
	e.t.Helper()
	e.drain()
	after, err := regtest.Present(e.reg.Root)
	if err != nil {
		e.t.Fatal(err)
	}
	if lost := before.Minus(after); len(lost) > 0 {
		e.t.Errorf("reachable objects deleted: %v", lost)
	}
	if left := after.Minus(before); len(left) > 0 {
		e.t.Errorf("garbage left behind: %v", left)
	}
	if ms, err := e.proj.Check(); err != nil || len(ms) > 0 {
		e.t.Errorf("projection check: %v %v", ms, err)
	}
	if ins, err := e.proj.Intents(); err != nil || len(ins) > 0 {
		e.t.Errorf("intents left: %+v %v", ins, err)
	}
}

func TestCrashAndRestart(t *testing.T) {
	kinds := []events.NodeKind{events.NodeManifest, events.NodeLayer, events.NodeBlob}
	points := []crashPoint{beforeStorage, afterStorage, publishFails, publishLost, afterApply}
	for _, kind := range kinds {
		for _, point := range points {
			t.Run(string(kind)+"/"+point.String(), func(t *testing.T) {
				e := newEnv(t, refcount.PolicyDelete)
				e.reg.PushRandom(t, "app:v1", 2)
				e.reg.PushRandom(t, "app:v1", 2) // the first image is garbage now
				e.reg.PushRandom(t, "other:v1", 1)
				e.reg.DeleteTag(t, "other", "v1")
				e.settle()
				before, err := regtest.Reachable(e.reg.Root, false)
				if err != nil {
					t.Fatal(err)
				}

				cr := &crasher{st: e.store, log: e.log, kind: kind, point: point}
				col, err := collector.New(collector.Config{Projection: e.proj, Storage: cr, Reader: e.store, Log: cr,
					Now: e.now, Concurrency: 4, BatchSize: 2, Reconcile: e.reconcile})
				if err != nil {
					t.Fatal(err)
				}
				// Run the doomed process until it dies (or, for a lost
				// event, until it has gone past it).
				for _, step := range []time.Duration{2 * testGrace, 2 * testGrace, 2 * testGrace, testRetention + testGrace} {
					e.advance(step)
					_, err := col.Pass(context.Background())
					if cr.isDead() {
						break // the pass may or may not have seen it: the process is gone
					}
					if err != nil {
						t.Fatalf("pass before the crash: %v", err)
					}
					if cr.hasFired() {
						break
					}
				}
				if !cr.hasFired() {
					t.Fatal("the crash never fired")
				}
				if cr.isDead() && point != publishLost {
					// A crash after the intent and before the apply of its
					// Collected event leaves it behind; the apply drops the
					// intent of a removal it commits (the intents of the
					// round after it may be left).
					ins, err := e.proj.Intents()
					if err != nil {
						t.Fatal(err)
					}
					if point != afterApply && len(ins) == 0 {
						t.Errorf("crash %s: no intent left", point)
					}
					for _, in := range ins {
						if slices.Contains(cr.applied, in.ID) {
							t.Errorf("crash %s: the intent of an applied removal left: %+v", point, in)
						}
					}
				}
				e.reopen()
				e.verifyAgainst(before)
				e.mustPull("app:v1")
			})
		}
	}
}

// racingStorage runs a hook right before the first storage operation on
// a node of the chosen kind: the re-check is done and the intent recorded,
// the removal not yet committed.
type racingStorage struct {
	collector.Storage
	kind events.NodeKind
	once sync.Once
	hook func()
}

func (r *racingStorage) DeleteRevision(ctx context.Context, repo string, d digest.Digest, tags []string) error {
	if r.kind == events.NodeManifest {
		r.once.Do(r.hook)
	}
	return r.Storage.DeleteRevision(ctx, repo, d, tags)
}

func (r *racingStorage) DeleteLayerLink(ctx context.Context, repo string, d digest.Digest) error {
	if r.kind == events.NodeLayer {
		r.once.Do(r.hook)
	}
	return r.Storage.DeleteLayerLink(ctx, repo, d)
}

func TestRemovalRacingWithNewReferenceIsUndone(t *testing.T) {
	t.Run("manifest pulled by digest", func(t *testing.T) {
		e := newEnv(t, refcount.PolicyDelete)
		img := e.reg.PushRandom(t, "app:v1", 2)
		d := regtest.Digest(t, img)
		e.reg.DeleteTag(t, "app", "v1")
		e.settle()
		e.advance(2 * testGrace)
		e.settle() // the registry has delivered up to now: a new collector need not wait for it
		rs := &racingStorage{Storage: e.store, kind: events.NodeManifest, hook: func() {
			// A client pulls the image by digest: its notification lands
			// after the re-check and before the commit. (The registry stamps
			// notifications with the wall clock; this one carries the
			// collector's clock, which the test moved forward.)
			ev := events.Event{V: events.Version, ID: "pull-race", Time: e.now().UTC(), Source: "registry",
				Kind: events.Touched, Ref: &events.RepoDigest{Repo: "app", Digest: digest.Digest(d.String())}}
			if _, err := e.log.PublishBatch(context.Background(), []events.Event{ev}); err != nil {
				t.Error(err)
			}
		}}
		col, err := collector.New(collector.Config{Projection: e.proj, Storage: rs, Reader: e.store, Log: e.log, Now: e.now})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := col.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rep.Restored != 1 || rep.Unlinked != 0 {
			t.Fatalf("report %+v, want one restored removal", rep)
		}
		e.mustPull("app@" + d.String())
		if ins, _ := e.proj.Intents(); len(ins) > 0 {
			t.Errorf("intents left: %+v", ins)
		}
		if ms, err := e.proj.Check(); err != nil || len(ms) > 0 {
			t.Errorf("projection check: %v %v", ms, err)
		}
		// Once the lease of the pull ends, the image goes after all.
		e.collectAndVerify()
		e.mustNotFind("app", d.String())
	})
	t.Run("manifest tagged again after its unlink", func(t *testing.T) {
		e := newEnv(t, refcount.PolicyDelete)
		img := e.reg.PushRandom(t, "app:v1", 1)
		d := regtest.Digest(t, img)
		e.reg.DeleteTag(t, "app", "v1")
		e.settle()
		e.advance(2 * testGrace)
		e.settle() // the registry has delivered up to now: a new collector need not wait for it
		rs := &racingStorage{Storage: e.store, kind: events.NodeManifest, hook: func() {
			// Unlink first, then the tag comes: the registry re-creates the
			// revision link, the Collected event is refused.
			if err := e.store.DeleteRevision(context.Background(), "app", digest.Digest(d.String()), nil); err != nil {
				t.Error(err)
			}
			e.reg.Push(t, "app:v2", img)
			e.settle()
		}}
		col, err := collector.New(collector.Config{Projection: e.proj, Storage: rs, Reader: e.store, Log: e.log, Now: e.now})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := col.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.mustPull("app:v2")
		e.collectAndVerify()
		e.mustPull("app:v2")
	})
	t.Run("layer link of an image pushed again", func(t *testing.T) {
		e := newEnv(t, refcount.PolicyDelete)
		img := regtest.RandomImage(t, 1)
		e.reg.Push(t, "app:v1", img)
		e.reg.DeleteTag(t, "app", "v1")
		e.settle()
		e.advance(2 * testGrace)
		if _, err := e.col.Pass(context.Background()); err != nil { // unlinks the manifest
			t.Fatal(err)
		}
		e.advance(2 * testGrace)
		e.settle() // the registry has delivered up to now: a new collector need not wait for it
		rs := &racingStorage{Storage: e.store, kind: events.NodeLayer, hook: func() {
			// The image is pushed again while its layers are being unlinked:
			// the registry finds the links, the manifest holds them again.
			e.reg.Push(t, "app:v1", img)
			e.settle()
		}}
		col, err := collector.New(collector.Config{Projection: e.proj, Storage: rs, Reader: e.store, Log: e.log, Now: e.now, Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := col.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rep.Restored == 0 {
			t.Errorf("report %+v, want a restored removal", rep)
		}
		e.mustPull("app:v1")
		if code := e.reg.ManifestStatus(t, "app", "v1"); code != http.StatusOK {
			t.Errorf("app:v1 answers %d", code)
		}
		e.collectAndVerify()
		e.mustPull("app:v1")
	})
}

// afterCollected publishes evs right after the first batch of Collected
// events is applied, before the commit settles them.
type afterCollected struct {
	*sinkLog
	then []events.Event
	done bool
}

func (a *afterCollected) Publish(ctx context.Context, evs []events.Event) error {
	if err := a.sinkLog.Publish(ctx, evs); err != nil {
		return err
	}
	if !a.done && len(evs) > 0 && evs[0].Kind == events.Collected {
		a.done = true
		return a.sinkLog.Publish(ctx, a.then)
	}
	return nil
}

// TestRacedThenDeletedDropsIntent: a removal raced (a pull after the
// re-check), so its apply keeps the node and its intent; the registry then
// deletes the manifest before the commit settles it. The commit finds the
// removal refused and the node gone: nothing to restore, and the intent
// goes.
func TestRacedThenDeletedDropsIntent(t *testing.T) {
	e := newEnv(t, refcount.PolicyDelete)
	img := e.reg.PushRandom(t, "app:v1", 2)
	d := digest.Digest(regtest.Digest(t, img).String())
	e.reg.DeleteTag(t, "app", "v1")
	e.settle()
	e.advance(2 * testGrace)
	e.settle()
	rs := &racingStorage{Storage: e.store, kind: events.NodeManifest, hook: func() {
		ev := events.Event{V: events.Version, ID: "pull-race", Time: e.now().UTC(), Source: "registry",
			Kind: events.Touched, Ref: &events.RepoDigest{Repo: "app", Digest: d}}
		if err := e.log.Publish(context.Background(), []events.Event{ev}); err != nil {
			t.Error(err)
		}
	}}
	lg := &afterCollected{sinkLog: e.log, then: []events.Event{{V: events.Version, ID: "del-after", Time: e.now().UTC(),
		Source: "registry", Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: "app", Digest: d}}}}
	col, err := collector.New(collector.Config{Projection: e.proj, Storage: rs, Reader: e.store, Log: lg, Now: e.now})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := col.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ins, err := e.proj.Intents()
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.proj.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) > 0 || st.Intents != 0 {
		t.Errorf("intents left after the pass: %+v (stats count %d)", ins, st.Intents)
	}
	if rep.Restored != 0 || rep.Unlinked != 0 {
		t.Errorf("report: %d restored, %d unlinked; want none", rep.Restored, rep.Unlinked)
	}
}
