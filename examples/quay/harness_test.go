package quay_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/examples/quay"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/refcount"
)

const (
	testGrace     = time.Hour
	testRetention = 3 * time.Hour
	// testWindow is the time machine of most repositories; team/ keeps
	// removed tags longer, lib not at once. The same windows are the
	// registry's and refgc's.
	testWindow = 2 * time.Hour
	teamWindow = 6 * time.Hour
)

var testWindows = map[string]time.Duration{"team/": teamWindow, "lib": 0}

// harness is the publisher beside a real refgc: an embedded JetStream, the
// event log's follower into a bbolt projection, and the collector with the
// publisher as the owner of everything its source states. Everyone reads
// one clock that the test moves.
type harness struct {
	t      *testing.T
	js     jetstream.JetStream
	proj   *refcount.Projection
	col    *collector.Collector
	reg    *quay.Registry
	svc    micro.Service
	faults *faultPublisher
	owner  *countingOwner
	offset atomic.Int64
	start  time.Time
}

func newHarness(t *testing.T, faults *faultPublisher) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, start: time.Now()}
	h.js, _ = jstest.Start(t)
	if _, err := eventlog.EnsureStream(ctx, h.js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub, err := eventlog.NewPublisher(h.js, eventlog.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	h.proj, err = refcount.Open(filepath.Join(t.TempDir(), "refs.db"),
		refcount.Options{Grace: testGrace, Retention: testRetention, TimeMachine: testWindow, TimeMachineRepos: testWindows,
			NoSync: true, Now: h.now})
	if err != nil {
		t.Fatal(err)
	}
	fol, err := eventlog.NewFollower(h.js, eventlog.FollowerConfig{Cursor: h.proj.Cursor, Bind: h.proj.BindStream,
		Apply: func(b []events.Record) error { _, err := h.proj.Apply(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := fol.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("follower: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); h.proj.Close() })
	if faults == nil {
		faults = &faultPublisher{}
	}
	faults.next = pub
	h.faults = faults
	h.reg, err = quay.Open(quay.Config{Path: filepath.Join(t.TempDir(), "quay.db"), Publisher: faults, Now: h.now,
		TimeMachine: h.proj.TimeMachineWindow})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.reg.Close() })
	h.serve()
	client, err := owner.NewClient(h.js.Conn(), h.reg.Source(), "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h.owner = &countingOwner{next: client, n: map[owner.Status]int{}}
	h.col, err = collector.New(collector.Config{Projection: h.proj, Log: &eventlog.JetStreamLog{Publisher: pub, Follower: fol},
		Owners: map[string]collector.OwnerRoute{h.reg.Source(): {Owner: h.owner}}, Now: h.now, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// serve starts the owner's deletion service.
func (h *harness) serve() {
	h.t.Helper()
	svc, err := h.reg.Serve(h.js.Conn())
	if err != nil {
		h.t.Fatal(err)
	}
	h.svc = svc
	h.t.Cleanup(func() { _ = svc.Stop() })
}

func (h *harness) now() time.Time          { return h.start.Add(time.Duration(h.offset.Load())) }
func (h *harness) advance(d time.Duration) { h.offset.Add(int64(d)) }

// oracle reads the tables into gc.py's rules, at the clock's now.
func (h *harness) oracle() *oracle { return h.oracleAt(h.now()) }

// oracleAt reads them as gc.py would judge them at a time.
func (h *harness) oracleAt(at time.Time) *oracle {
	h.t.Helper()
	return loadOracle(h.t, h.reg.DB(), at, h.proj.TimeMachineWindow)
}

// pass runs one collector pass and checks, with the oracle, that every row
// gc.py's rules call live before it is still there after it, whole.
func (h *harness) pass() collector.Report {
	h.t.Helper()
	live := h.oracle().live()
	rep, err := h.col.Pass(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	after := h.oracle()
	after.checkBlobs(h.t)
	rows := after.rows()
	for k := range live {
		if !rows[k] {
			h.t.Fatalf("the pass deleted %s, which gc.py's rules call live (report %+v)", k, rep)
		}
	}
	return rep
}

// drain delivers what the faults held, then moves the clock past grace and
// retention before each pass until two passes in a row remove nothing, and
// checks that exactly the rows gc.py's rules call garbage are gone. It
// returns the passes that removed something.
func (h *harness) drain() int {
	h.t.Helper()
	if err := h.faults.release(context.Background(), true); err != nil {
		h.t.Fatal(err)
	}
	busy, idle := 0, 0
	for idle < 2 {
		if busy > 200 {
			h.t.Fatal("the drain does not end")
		}
		h.advance(testRetention + testGrace)
		rep := h.pass()
		if rep.Errors > 0 {
			h.t.Fatalf("pass had %d errors", rep.Errors)
		}
		if rep.Unlinked+rep.Purged+rep.Restored+rep.Expired+rep.Released > 0 {
			busy, idle = busy+1, 0
		} else {
			idle++
		}
	}
	if gone, _ := h.oracle().garbage(); len(gone) > 0 {
		h.t.Fatalf("after the drain, gc.py's rules still call garbage: %v%s", keys(gone), h.explainTags(gone))
	}
	if ms := mustCheck(h.t, h.proj); len(ms) > 0 {
		h.t.Fatalf("projection invariant: %v", ms)
	}
	return busy
}

// explainTags says, for the tag rows among rows, what the registry and
// refgc know of them.
func (h *harness) explainTags(rows rowSet) string {
	out := ""
	for k := range rows {
		var id int64
		if _, err := fmt.Sscanf(k, "tag/%d", &id); err != nil {
			continue
		}
		var repo, name string
		if err := h.reg.DB().QueryRow(`SELECT repo, name FROM tag WHERE id = ?`, id).Scan(&repo, &name); err != nil {
			h.t.Fatal(err)
		}
		out += "\n" + k + ": " + h.explainTag(repo, name)
	}
	return out
}

// explainTag says what the registry and refgc know of a tag.
func (h *harness) explainTag(repo, name string) string {
	out := fmt.Sprintf(" (now %v)", h.now().UTC())
	rows, err := h.reg.DB().Query(`SELECT id, lifetime_start, lifetime_end FROM tag WHERE repo = ? AND name = ?`, repo, name)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, start int64
		var end sql.NullInt64
		if err := rows.Scan(&id, &start, &end); err != nil {
			h.t.Fatal(err)
		}
		out += fmt.Sprintf("\n  row %d: lifetime %v to %v", id, time.UnixMilli(start).UTC(), time.UnixMilli(end.Int64).UTC())
	}
	ref := events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: name}
	ni, ok, err := h.proj.Get(ref)
	l, _, err2 := h.proj.TagLifeOf(ref)
	return out + fmt.Sprintf("\n  refgc: node %v %+v, life %+v %v %v", ok, ni, l, err, err2)
}

func mustCheck(t testing.TB, p *refcount.Projection) []refcount.Mismatch {
	t.Helper()
	ms, err := p.Check()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func keys(s rowSet) []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	return out
}

// faultPublisher delivers the registry's events late, reordered and
// twice: it holds some batches back (the registry sees them acknowledged),
// releases held ones later in shuffled order, and sends some again, under
// their own id (the log stores them once) or as a replayed statement under
// a new one.
type faultPublisher struct {
	next *eventlog.Publisher
	rng  *rand.Rand // nil: no faults
	// Probabilities per batch.
	hold, dup, flush float64

	mu   sync.Mutex
	held [][]events.Event
	n    struct{ held, dups, replays, reordered int }
}

func (f *faultPublisher) PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	f.mu.Lock()
	if f.rng == nil {
		f.mu.Unlock()
		return f.next.PublishBatch(ctx, evs)
	}
	hold := f.rng.Float64() < f.hold
	dup := f.rng.Float64() < f.dup
	rel := f.rng.Float64() < f.flush
	if hold {
		f.held = append(f.held, append([]events.Event(nil), evs...))
		f.n.held++
	}
	if dup {
		again := append([]events.Event(nil), evs...)
		if f.rng.IntN(2) == 0 {
			for i := range again {
				again[i].ID += "-replayed"
			}
			f.n.replays++
		} else {
			f.n.dups++
		}
		f.held = append(f.held, again)
	}
	f.mu.Unlock()
	if !hold {
		if _, err := f.next.PublishBatch(ctx, evs); err != nil {
			return nil, err
		}
	}
	if rel {
		if err := f.release(ctx, false); err != nil {
			return nil, err
		}
	}
	return make([]eventlog.PubResult, len(evs)), nil
}

// release publishes held batches (all of them, or a random part) in a
// shuffled order.
func (f *faultPublisher) release(ctx context.Context, all bool) error {
	f.mu.Lock()
	var out [][]events.Event
	if f.rng != nil {
		f.rng.Shuffle(len(f.held), func(i, j int) { f.held[i], f.held[j] = f.held[j], f.held[i] })
		keep := f.held[:0]
		for _, b := range f.held {
			if all || f.rng.IntN(2) == 0 {
				out = append(out, b)
			} else {
				keep = append(keep, b)
			}
		}
		f.held = keep
		if len(out) > 1 {
			f.n.reordered += len(out)
		}
	}
	f.mu.Unlock()
	for _, b := range out {
		if _, err := f.next.PublishBatch(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// countingOwner counts the owner's answers by status, and passes restores on.
type countingOwner struct {
	next *owner.Client
	mu   sync.Mutex
	n    map[owner.Status]int
}

func (c *countingOwner) Delete(ctx context.Context, items []owner.Item) ([]owner.Result, error) {
	res, err := c.next.Delete(ctx, items)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range res {
		c.n[r.Status]++
	}
	return res, err
}

// count is how many answers had status.
func (c *countingOwner) count(status owner.Status) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[status]
}

func (c *countingOwner) Restore(ctx context.Context, items []owner.Item) ([]owner.Result, error) {
	return c.next.Restore(ctx, items)
}
