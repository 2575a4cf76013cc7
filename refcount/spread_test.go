package refcount

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// TestCandidatesSpread: a round's candidates come from the window oldest,
// a group at a time in turn (width of them taking turns), each group's
// oldest first; the oldest is always among them, and without groups the
// order is the queue's.
func TestCandidatesSpread(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, Untagged: PolicyDelete})
	// Oldest first: a1 a2 a3 b1 b2 c1, each a minute after the one before,
	// and a blob-only push that must be passed over by a manifest filter.
	for _, m := range []struct{ repo, d string }{{"a", "a1"}, {"a", "a2"}, {"a", "a3"}, {"b", "b1"}, {"b", "b2"}, {"c", "c1"}} {
		f.apply(pushM(m.repo, m.d, "", nil, nil, ""))
		f.advance(time.Minute)
		f.apply(pushB("z", "blob-"+m.d))
	}
	manifests := func(k events.NodeKind) bool { return k == events.NodeManifest }
	byRepo := func(n events.NodeRef) string { return n.Repo }
	for _, tc := range []struct {
		name                 string
		limit, window, width int
		group                func(events.NodeRef) string
		want                 []string
	}{
		{"queue order without groups", 4, 6, 0, nil, []string{"a1", "a2", "a3", "b1"}},
		{"a repository at a time", 4, 6, 0, byRepo, []string{"a1", "b1", "c1", "a2"}},
		{"all of the window", 6, 6, 0, byRepo, []string{"a1", "b1", "c1", "a2", "b2", "a3"}},
		{"only the window", 4, 4, 0, byRepo, []string{"a1", "b1", "a2", "a3"}},
		{"a window under the limit is the limit", 3, 1, 0, byRepo, []string{"a1", "a2", "a3"}},
		{"more than there is", 10, 100, 0, byRepo, []string{"a1", "b1", "c1", "a2", "b2", "a3"}},
		{"one", 1, 6, 0, byRepo, []string{"a1"}},
		{"two repositories at a time", 6, 6, 2, byRepo, []string{"a1", "b1", "a2", "b2", "a3", "c1"}},
		{"two at a time, up to the limit", 4, 6, 2, byRepo, []string{"a1", "b1", "a2", "b2"}},
		{"as many at a time as there are", 6, 6, 3, byRepo, []string{"a1", "b1", "c1", "a2", "b2", "a3"}},
		{"one at a time is the queue's order", 4, 6, 1, byRepo, []string{"a1", "a2", "a3", "b1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := f.p.CandidatesSpread(f.now.Add(2*time.Hour), tc.limit, tc.window, tc.width, manifests, tc.group)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range cs {
				got = append(got, c.Node.String())
			}
			var want []string
			for _, d := range tc.want {
				want = append(want, manN(d[:1], d).String())
			}
			if !slices.Equal(got, want) {
				t.Errorf("got  %v\nwant %v", got, want)
			}
		})
	}
	// CandidatesOf is the spread without groups over a window of its limit.
	of, err := f.p.CandidatesOf(f.now.Add(2*time.Hour), 6, manifests)
	if err != nil {
		t.Fatal(err)
	}
	spread, err := f.p.CandidatesSpread(f.now.Add(2*time.Hour), 6, 6, 0, manifests, nil)
	if err != nil || !slices.Equal(of, spread) {
		t.Errorf("CandidatesOf %v, CandidatesSpread without groups %v (%v)", of, spread, err)
	}
	// Nothing is eligible before its grace ends.
	if cs, err := f.p.CandidatesSpread(f.now, 6, 6, 0, manifests, byRepo); err != nil || len(cs) != 0 {
		t.Errorf("before the grace: %v (%v)", cs, err)
	}
}

// TestCandidatesSpreadDamagedKey: a damaged queue entry fails the call
// even when it is of a kind the call passes over.
func TestCandidatesSpreadDamagedKey(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, Untagged: PolicyDelete})
	f.apply(pushM("a", "a1", "", nil, nil, ""))
	at := make([]byte, 8)
	binary.BigEndian.PutUint64(at, uint64(f.now.UnixNano()))
	if err := f.p.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQueue).Put(append(at, 'b', 0x01, 0xaa), nil) // a blob key cut short
	}); err != nil {
		t.Fatal(err)
	}
	manifests := func(k events.NodeKind) bool { return k == events.NodeManifest }
	if _, err := f.p.CandidatesSpread(f.now.Add(2*time.Hour), 4, 4, 0, manifests, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a damaged key passed over: %v, want ErrCorrupt", err)
	}
}
