package refcount

import (
	"fmt"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
)

// applyRecs applies log records to f (its own batching).
func applyRecs(t *testing.T, f *fixture, recs []events.Record) {
	t.Helper()
	res, err := f.p.Apply(recs)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Invalid) > 0 {
		t.Fatalf("invalid: %v", res.Invalid[0].Err)
	}
}

// Two emitters of one repository partition's statements (HA twins, or an
// incarnation before and after a restore from an older snapshot) that cut
// the same log into different batches state the same thing at the same
// version: a digest partition that takes the newest statement of either
// holds the blob a tag uses, after the barrier passed on one of them.
func TestPartitionTwinsStateAlike(t *testing.T) {
	part := func(r Role) Partition { return Partition{Role: r, Index: 0, Repos: 1, Digests: 1} }
	whole := newFixture(t, Options{})
	twinA := newFixture(t, Options{Partition: part(RoleRepos)})
	twinB := newFixture(t, Options{Partition: part(RoleRepos)})
	d := newFixture(t, Options{Partition: part(RoleDigests)})

	var log []events.Record
	add := func(evs ...events.Event) []events.Record {
		var out []events.Record
		for _, e := range evs {
			seq := uint64(len(log) + 1)
			if e.ID == "" {
				e.ID = fmt.Sprintf("ev-%d", seq)
			}
			if e.Time.IsZero() {
				e.Time = t0.Add(time.Duration(seq) * time.Second)
			}
			r := events.Record{Seq: seq, Event: e}
			log = append(log, r)
			out = append(out, r)
		}
		return out
	}
	add(pushB("repo", "z"), delD("repo", "z"), pushM("repo", "img", "v1", []string{"z"}, nil, ""))

	applyRecs(t, whole, log)
	applyRecs(t, twinA, log[:1]) // batches [1] [2 3]
	applyRecs(t, twinA, log[1:3])
	applyRecs(t, twinB, log[:2]) // batches [1 2], then it stops (or lags)

	var stated []events.Event
	for _, tw := range []*fixture{twinA, twinB} {
		out, err := tw.p.Outbox(100)
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.p.Published(out); err != nil {
			t.Fatal(err)
		}
		stated = append(stated, out...)
	}
	add(stated...)
	applyRecs(t, twinA, log[3:])
	through, err := twinA.p.PublishedThrough()
	if err != nil {
		t.Fatal(err)
	}
	if last := uint64(len(log)); through < last {
		t.Fatalf("twin A published through %d, log at %d: the barrier would wait", through, last)
	}
	// The barrier passed (r0 recorded the log's last sequence): d catches up.
	applyRecs(t, d, log)
	if ni, _ := whole.info(blobN("z")); ni.Count == 0 {
		t.Fatalf("whole projection: z unheld")
	}
	if ni, _ := d.info(blobN("z")); ni.Count == 0 {
		t.Errorf("digest partition: z (layer of tagged repo:v1) unheld after the barrier passed: %+v; candidates far ahead: %v",
			ni, d.candidates(t0.Add(1000*time.Hour)))
	}
}

// The barrier covers statements made from events up to the log's last
// sequence L when it was read; the catch-up after it goes further. A link
// made after L (a mount, then the manifest that needs it) is in the digest
// partition's log before its re-check, but not its statement yet: the
// digest partition leases what such events name, and refuses the purge as
// the whole projection does.
func TestPartitionLinkAfterBarrierKept(t *testing.T) {
	x := newPartitioned(t, 1, 1, 9)
	d := x.digests[0]
	x.append(pushB("repo", "z"))
	x.relay()
	x.deliver(true)
	x.append(delD("repo", "z"))
	x.relay()
	x.deliver(true)
	x.relay() // the barrier passes: r0 published everything through the log's end
	if len(x.pending) != 0 {
		t.Fatalf("pending %v", x.pending)
	}
	x.now = x.now.Add(48 * time.Hour)
	// After the barrier read L: the registry mounts z and accepts a
	// manifest using it; the relay has not run yet when d catches up.
	x.append(mountB("repo", "z", "other"), pushM("repo", "img", "v1", []string{"z"}, nil, ""))
	now := x.now.Add(time.Minute)
	for _, f := range []*fixture{x.whole, d} {
		cur, _ := f.p.Cursor()
		_, err := f.p.BeginCollect("purge-z", blobN("z"), now, cur)
		if f == x.whole {
			if err == nil {
				t.Fatalf("whole projection: purge of z passed its re-check")
			}
			continue
		}
		if err == nil {
			t.Errorf("digest partition: purge of z (mounted and used by repo:v1 before the re-check) passed its re-check")
		}
	}
}

// A registry-wide pause in a digest partition of two repository
// partitions is lifted only once both have reconciled: the reconcile of a
// partition that is not one of its layout (an r2 started with
// --repo-partitions 3 during a resize, or by mistake) counts for nothing.
func TestPartitionForeignReconcileIgnored(t *testing.T) {
	x := newPartitioned(t, 2, 1, 4)
	d := x.digests[0]
	x.append(events.Event{Kind: events.Refused, Refused: &events.RefusedRef{Reason: "too_large"}})
	for _, part := range []string{"r0", "r2"} {
		x.append(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: uint64(len(x.log)), Partition: part, Layout: "2/1"}})
	}
	ps, err := d.p.Pauses()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) == 0 {
		t.Errorf("the registry-wide pause was lifted without r1's reconcile")
	}
}

// Names that parse to the same partition must be that partition's name:
// "r01" would be r1 for the projection, the relay and the statements, and
// another partition for the daemon's leadership, intents and snapshots.
func TestPartitionNameCanonical(t *testing.T) {
	for _, name := range []string{"r01", "r+1", "d01"} {
		p, err := ParsePartition(name, 2, 2)
		if err == nil && p.Name() != name {
			t.Errorf("ParsePartition(%q) = %s: accepted under another name", name, p.Name())
		}
	}
}

// A repository partition states the same thing for the same log cut into
// other batches.
func TestPartitionOutboxIndependentOfBatches(t *testing.T) {
	part := Partition{Role: RoleRepos, Index: 0, Repos: 1, Digests: 1}
	a := newFixture(t, Options{Partition: part})
	b := newFixture(t, Options{Partition: part})
	recs := a.records(pushB("repo", "z"), delD("repo", "z"), pushM("repo", "img", "v1", []string{"z"}, nil, ""))
	applyRecs(t, a, recs)
	applyRecs(t, b, recs[:1])
	applyRecs(t, b, recs[1:])
	oa, err := a.p.Outbox(10)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := b.p.Outbox(10)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(evs []events.Event) (out []string) {
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%s held=%v", e.ID, e.Held.Held))
		}
		return out
	}
	if fmt.Sprint(ids(oa)) != fmt.Sprint(ids(ob)) {
		t.Errorf("one batch: %v; batches [1] [2 3]: %v", ids(oa), ids(ob))
	}
}

// An orphan waits for every repository partition's whole reconcile; the
// statement of the link that reconcile found comes after its
// reconcile.completed, and the barrier covers it only from the next purge
// round: a reconcile applied by the catch-up after the barrier unpins the
// orphan with a lease, and the re-check refuses its purge.
func TestPartitionOrphanUnpinnedLeased(t *testing.T) {
	x := newPartitioned(t, 1, 1, 5)
	d := x.digests[0]
	// A link whose notification was lost: storage has repo/z, no projection does.
	x.append(events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: dg("z"), Size: 1}}) // d's walk
	x.relay()
	x.deliver(true) // the barrier passes here: nothing to publish
	x.now = x.now.Add(48 * time.Hour)
	// r0's whole reconcile: it finds the link and completes, after L.
	x.append(events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Repo: "repo", Digest: dg("z"), Size: 1}},
		events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: uint64(len(x.log)), Partition: "r0", Layout: "1/1"}})
	cur, _ := d.p.Cursor()
	if _, err := d.p.BeginCollect("purge-z", blobN("z"), x.now.Add(time.Minute), cur); err == nil {
		ni, _ := x.repos[0].info(layN("repo", "z"))
		t.Errorf("orphan z passed its re-check while r0 links it (%+v): its statement is not in the log yet", ni)
	}
}

// A whole-registry projection on the same log as partitions (the instance
// being migrated from) does not take a partition's reconcile of its share
// for a reconcile of the whole registry: a digest partition's walk of its
// blob data does not lift the registry-wide pause of a lost notification.
func TestWholeIgnoresPartitionReconcile(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(events.Event{Kind: events.Refused, Refused: &events.RefusedRef{Reason: "too_large"}})
	f.apply(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: f.seq, Partition: "d0"}})
	ps, err := f.p.Pauses()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) == 0 {
		t.Errorf("the whole projection's registry-wide pause was lifted by digest partition d0's walk of its blobs")
	}
}
