package refcount

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
)

func TestParsePartition(t *testing.T) {
	for _, tc := range []struct {
		name           string
		repos, digests int
		ok             bool
	}{
		{"", 0, 0, true}, {"r0", 2, 3, true}, {"d2", 2, 3, true}, {"r2", 2, 3, false}, {"d3", 2, 3, false},
		{"x0", 2, 3, false}, {"r", 2, 3, false}, {"r-1", 2, 3, false}, {"r0", 0, 3, false}, {"d0", 2, 257, false},
	} {
		t.Run(fmt.Sprintf("%s/%d/%d", tc.name, tc.repos, tc.digests), func(t *testing.T) {
			p, err := ParsePartition(tc.name, tc.repos, tc.digests)
			if (err == nil) != tc.ok {
				t.Fatalf("ParsePartition: %v, want ok %v", err, tc.ok)
			}
			if err == nil && p.Name() != tc.name {
				t.Fatalf("name %q", p.Name())
			}
			if err != nil && !errors.Is(err, ErrPartition) {
				t.Fatalf("error %v is not ErrPartition", err)
			}
		})
	}
}

// Every digest belongs to exactly one digest partition, and that
// partition's prefixes include the digest's storage prefix.
func TestDigestPartitionPrefixes(t *testing.T) {
	for _, n := range []int{1, 3, 7, 256} {
		for i := range 500 {
			d := dg(fmt.Sprint(i))
			j := DigestPartition(d, n)
			owners := 0
			for k := range n {
				p := Partition{Role: RoleDigests, Index: k, Repos: 1, Digests: n}
				if p.HasDigest(d) {
					owners++
					if !p.HasPrefix(d.Encoded()[:2]) {
						t.Fatalf("n=%d: %s in d%d, not in its prefixes", n, d, k)
					}
				}
			}
			if owners != 1 || j < 0 || j >= n {
				t.Fatalf("n=%d: %s: partition %d, %d owners", n, d, j, owners)
			}
		}
	}
}

// A file keeps the partition it was made for.
func TestPartitionOfFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "refs.db")
	r0 := Partition{Role: RoleRepos, Index: 0, Repos: 2, Digests: 2}
	p, err := Open(path, Options{Partition: r0, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	for _, other := range []Partition{{}, {Role: RoleRepos, Index: 1, Repos: 2, Digests: 2}, {Role: RoleRepos, Index: 0, Repos: 3, Digests: 2}} {
		if _, err := Open(path, Options{Partition: other, NoSync: true}); !errors.Is(err, ErrPartition) {
			t.Fatalf("opened as %s: %v", other, err)
		}
	}
	if p, err = Open(path, Options{Partition: r0, NoSync: true}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if p, err = Open(path, Options{ReadOnly: true}); err != nil || p.Options().Partition != r0 {
		t.Fatalf("read-only: %v %+v", err, p.Options().Partition)
	}
	p.Close()
}

// partitioned is a registry's log applied to one whole projection and to
// repository and digest partitions, with the repository partitions'
// statements published back into the log late, twice and out of order.
type partitioned struct {
	t       *testing.T
	rng     *rand.Rand
	log     []events.Record
	whole   *fixture
	repos   []*fixture
	digests []*fixture
	applied map[*fixture]int // how much of log each projection applied
	pending []events.Event   // statements published but not yet in the log
	sent    []events.Event   // every statement ever published, for replays
	now     time.Time
}

func newPartitioned(t *testing.T, nr, nd int, seed uint64) *partitioned {
	x := &partitioned{t: t, rng: rand.New(rand.NewPCG(seed, 7)), applied: map[*fixture]int{}, now: t0}
	x.whole = newFixture(t, Options{})
	for i := range nr {
		x.repos = append(x.repos, newFixture(t, Options{Partition: Partition{Role: RoleRepos, Index: i, Repos: nr, Digests: nd}}))
	}
	for j := range nd {
		x.digests = append(x.digests, newFixture(t, Options{Partition: Partition{Role: RoleDigests, Index: j, Repos: nr, Digests: nd}}))
	}
	return x
}

func (x *partitioned) all() []*fixture {
	return append(append([]*fixture{x.whole}, x.repos...), x.digests...)
}

// append adds events to the log and applies it everywhere.
func (x *partitioned) append(evs ...events.Event) {
	x.t.Helper()
	for _, e := range evs {
		seq := uint64(len(x.log) + 1)
		if e.ID == "" {
			e.ID = fmt.Sprintf("ev-%d", seq)
		}
		if e.Time.IsZero() {
			e.Time = x.now
		}
		x.log = append(x.log, events.Record{Seq: seq, Event: e})
	}
	for _, f := range x.all() {
		recs := x.log[x.applied[f]:]
		res, err := f.p.Apply(recs)
		if err != nil {
			x.t.Fatal(err)
		}
		if len(res.Invalid) > 0 {
			x.t.Fatalf("invalid: %v", res.Invalid[0].Err)
		}
		x.applied[f] = len(x.log)
	}
}

// relay moves the repository partitions' outboxes to pending, as the relay
// publishes them.
func (x *partitioned) relay() {
	x.t.Helper()
	for _, f := range x.repos {
		out, err := f.p.Outbox(1 << 20)
		if err != nil {
			x.t.Fatal(err)
		}
		if err := f.p.Published(out); err != nil {
			x.t.Fatal(err)
		}
		x.pending = append(x.pending, out...)
		x.sent = append(x.sent, out...)
	}
}

// deliver puts pending statements into the log: all of them, or a random
// share, shuffled; with duplicates, and replays of old statements.
func (x *partitioned) deliver(all bool) {
	x.rng.Shuffle(len(x.pending), func(i, j int) { x.pending[i], x.pending[j] = x.pending[j], x.pending[i] })
	n := len(x.pending)
	if !all {
		n = x.rng.IntN(n + 1)
	}
	batch := slices.Clone(x.pending[:n])
	x.pending = slices.Delete(x.pending, 0, n)
	for i := x.rng.IntN(3); i > 0 && len(x.sent) > 0; i-- {
		batch = append(batch, x.sent[x.rng.IntN(len(x.sent))]) // a replay, beyond the log's deduplication
	}
	for i := range batch {
		batch[i].ID = fmt.Sprintf("%s-%d", batch[i].ID, len(x.log)+i) // delivered again, under a new id
	}
	x.append(batch...)
}

// compare checks the partitions against the whole projection, once every
// statement is delivered: the repository-scoped nodes are the same, and a
// blob is held in its digest partition exactly when the whole projection
// holds it.
func (x *partitioned) compare() {
	x.t.Helper()
	whole := map[string]NodeInfo{}
	for _, ni := range x.whole.dumpInfos() {
		whole[ni.Node.String()] = ni
	}
	got := map[string]NodeInfo{}
	for _, f := range x.repos {
		for _, ni := range f.dumpInfos() {
			if ni.Node.Kind != events.NodeBlob {
				got[ni.Node.String()] = ni
			}
		}
	}
	for _, f := range x.digests {
		for _, ni := range f.dumpInfos() {
			got[ni.Node.String()] = ni
		}
	}
	for k, w := range whole {
		g, ok := got[k]
		switch {
		case w.Node.Kind == events.NodeBlob && w.Count > 0 && (!ok || g.Count == 0):
			x.t.Fatalf("seq %d: %s held (%v) in the whole projection, not in its digest partition (%+v)", len(x.log), k, w.Holders, g)
		case w.Node.Kind == events.NodeBlob && w.Count == 0 && ok && g.Count > 0:
			x.t.Fatalf("seq %d: %s unheld in the whole projection, held in its digest partition (%v)", len(x.log), k, g.Holders)
		case w.Node.Kind == events.NodeBlob:
		case !ok:
			x.t.Fatalf("seq %d: %s missing from its repository partition", len(x.log), k)
		case g.Count != w.Count || g.Present != w.Present || !sameTime(g.Eligible, w.Eligible) || !sameTime(g.Lease, w.Lease):
			x.t.Fatalf("seq %d: %s: partition %+v, whole %+v", len(x.log), k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := whole[k]; !ok && g.Node.Kind != events.NodeBlob {
			x.t.Fatalf("seq %d: %s only in its repository partition", len(x.log), k)
		}
	}
	for _, f := range x.all() {
		f.check()
	}
}

func sameTime(a, b *time.Time) bool { return (a == nil) == (b == nil) && (a == nil || a.Equal(*b)) }

// The partitions of a registry agree with its whole projection whatever
// the order, delay and repetition of the statements between them.
func TestPartitionsAgreeWithWhole(t *testing.T) {
	for _, shape := range [][2]int{{2, 3}, {3, 1}} {
		t.Run(fmt.Sprintf("r%d-d%d", shape[0], shape[1]), func(t *testing.T) {
			x := newPartitioned(t, shape[0], shape[1], uint64(shape[0]*10+shape[1]))
			rng := x.rng
			repos := []string{"a", "b", "c/d", "e", "f/g"}
			tags := []string{"v1", "latest"}
			blob := func() string { return fmt.Sprintf("blob%d", rng.IntN(20)) }
			var pushed []string
			bodies := map[string]events.Event{}
			for op := 0; op < *randomOps/2; op++ {
				repo := repos[rng.IntN(len(repos))]
				var e events.Event
				switch r := rng.IntN(100); {
				case r < 20:
					e = pushB(repo, blob())
				case r < 27:
					e = mountB(repo, blob(), repos[rng.IntN(len(repos))])
				case r < 50:
					name := fmt.Sprintf("man%d", rng.IntN(30))
					if b, ok := bodies[repo+"@"+name]; ok {
						e = b
					} else {
						var blobs []string
						for j := 1 + rng.IntN(3); j > 0; j-- {
							blobs = append(blobs, blob())
						}
						e = pushM(repo, name, "", blobs, nil, "")
						bodies[repo+"@"+name] = e
						pushed = append(pushed, name)
					}
				case r < 62:
					if len(pushed) > 0 {
						e = setT(repo, tags[rng.IntN(len(tags))], pushed[rng.IntN(len(pushed))])
					}
				case r < 72:
					e = delT(repo, tags[rng.IntN(len(tags))])
				case r < 82:
					if len(pushed) > 0 {
						e = delD(repo, pushed[rng.IntN(len(pushed))])
					}
				case r < 87:
					e = touch(repo, blob())
				case r < 88:
					e = delRepo(repo)
				case r < 96:
					// The collector of the whole projection unlinks what it
					// may: the repository partitions hold the same nodes.
					x.now = x.now.Add(2 * time.Hour)
					cs, err := x.whole.p.CandidatesOf(x.now.Add(100*time.Hour), 4, func(k events.NodeKind) bool { return k != events.NodeBlob })
					if err != nil {
						t.Fatal(err)
					}
					for _, c := range cs {
						cur, _ := x.whole.p.Cursor()
						in, err := x.whole.p.BeginCollect(fmt.Sprintf("i%d", op), c.Node, x.now.Add(100*time.Hour), cur)
						if err != nil {
							continue
						}
						if err := x.whole.p.DropIntents([]string{in.ID}); err != nil {
							t.Fatal(err)
						}
						x.append(collectedEv(in))
					}
				default:
					x.relay()
					x.deliver(rng.IntN(4) == 0)
				}
				if e.Kind != "" {
					x.append(e)
				}
				if op%97 == 96 {
					x.relay()
					x.deliver(true)
					x.compare()
				}
			}
			x.relay()
			x.deliver(true)
			x.compare()
		})
	}
}

// A registry-wide pause holds a digest partition's purges until every
// repository partition has reconciled after it; a repository's pause,
// until its own partition has.
func TestDigestPartitionPauses(t *testing.T) {
	x := newPartitioned(t, 2, 1, 1)
	d := x.digests[0]
	pauses := func() []string {
		ps, err := d.p.Pauses()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.Repo)
		}
		return out
	}
	var inR0, inR1 string
	for i := 0; inR0 == "" || inR1 == ""; i++ {
		name := fmt.Sprintf("repo%d", i)
		if RepoPartition(name, 2) == 0 {
			inR0 = name
		} else {
			inR1 = name
		}
	}
	refused := func(repo string) events.Event {
		return events.Event{Kind: events.Refused, Refused: &events.RefusedRef{Reason: "too_large", Repo: repo}}
	}
	reconciled := func(part string, repos ...string) events.Event {
		return events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: uint64(len(x.log)), Partition: part, Repos: repos, Layout: "2/1"}}
	}
	x.append(refused(""), refused(inR0), refused(inR1))
	if got := pauses(); len(got) != 3 {
		t.Fatalf("pauses %q", got)
	}
	x.append(reconciled("d0"), reconciled("r0"))
	if got := pauses(); !slices.Equal(got, []string{"", inR1}) {
		t.Fatalf("after r0's and d0's reconciles: pauses %q", got)
	}
	x.append(reconciled("r1", inR0)) // not r1's repository, and not all of r1
	if got := pauses(); !slices.Equal(got, []string{"", inR1}) {
		t.Fatalf("after r1's limited reconcile: pauses %q", got)
	}
	x.append(refused("")) // a new registry-wide pause starts afresh
	x.append(reconciled("r1"))
	if got := pauses(); !slices.Equal(got, []string{""}) {
		t.Fatalf("after r1's reconcile: pauses %q", got)
	}
	x.append(reconciled("r0"))
	if got := pauses(); len(got) != 0 {
		t.Fatalf("after both: pauses %q", got)
	}
	// The repository partitions pause for their own repositories only.
	for i, f := range x.repos {
		ps, err := f.p.Pauses()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Repo != "" && RepoPartition(p.Repo, 2) != i {
				t.Fatalf("r%d paused for %s", i, p.Repo)
			}
		}
	}
}

// Blob data a digest partition's walk finds with no holder waits until
// every repository partition has reconciled after it, or a statement
// says it is held.
func TestDigestPartitionOrphans(t *testing.T) {
	x := newPartitioned(t, 2, 1, 2)
	d := x.digests[0]
	observed := func(name string) events.Event {
		return events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: dg(name), Size: 4}}
	}
	reconciled := func(part string) events.Event {
		return events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: uint64(len(x.log)), Partition: part, Layout: x.digests[0].p.Options().Partition.Layout()}}
	}
	x.append(reconciled("r0"), reconciled("r1")) // before the orphans: covers nothing
	x.append(observed("lone"), observed("linked"))
	far := x.now.Add(1000 * time.Hour)
	if got := d.candidates(far); len(got) != 0 {
		t.Fatalf("orphans are candidates at once: %v", got)
	}
	var repo string
	for i := 0; repo == ""; i++ {
		if name := fmt.Sprintf("repo%d", i); RepoPartition(name, 2) == 1 {
			repo = name
		}
	}
	x.append(pushB(repo, "linked")) // r1 finds the link
	x.relay()
	x.deliver(true)
	if ni, ok := d.info(blobN("linked")); !ok || ni.Pinned || ni.Count != 1 {
		t.Fatalf("linked orphan: %+v", ni)
	}
	x.append(reconciled("r1"))
	if ni, _ := d.info(blobN("lone")); !ni.Pinned {
		t.Fatalf("orphan unpinned before r0 reconciled: %+v", ni)
	}
	x.append(reconciled("r0"))
	if ni, _ := d.info(blobN("lone")); ni.Pinned || ni.Eligible == nil {
		t.Fatalf("orphan still pinned after both reconciled: %+v", ni)
	}
	x.compare()
}

// A digest partition that lost what it was told (here: one that starts
// from the middle of the log, as one rebuilt from storage would) learns
// every hold again from the repository partitions' whole reconciles,
// before the orphans its walk found are unpinned.
func TestDigestPartitionRelearnsHolds(t *testing.T) {
	x := newPartitioned(t, 2, 1, 3)
	var repo string
	for i := 0; repo == ""; i++ {
		if name := fmt.Sprintf("repo%d", i); RepoPartition(name, 2) == 0 {
			repo = name
		}
	}
	x.append(pushM(repo, "img", "v1", []string{"layer"}, nil, ""))
	x.relay()
	x.deliver(true)
	fresh := newFixture(t, Options{Partition: x.digests[0].p.Options().Partition})
	x.digests = append(x.digests, fresh)
	x.applied[fresh] = len(x.log) // it never saw the statements so far
	x.append(events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: dg("layer"), Size: 5}})
	if ni, _ := fresh.info(blobN("layer")); !ni.Pinned || ni.Count != 0 {
		t.Fatalf("orphan as the walk found it: %+v", ni)
	}
	for _, part := range []string{"r0", "r1"} {
		x.append(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: uint64(len(x.log)), Partition: part, Layout: x.digests[0].p.Options().Partition.Layout()}})
	}
	x.relay()
	x.deliver(true)
	if ni, _ := fresh.info(blobN("layer")); ni.Pinned || ni.Count != 1 || ni.Eligible != nil {
		t.Fatalf("after the reconciles: %+v, want held by r0", ni)
	}
}
