package refcount

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// fixture drives a projection with hand-made events on a fake clock.
type fixture struct {
	t   *testing.T
	p   *Projection
	seq uint64
	now time.Time
	log []events.Record // what applyTwice applied
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	opts.NoSync = true
	p, err := Open(filepath.Join(t.TempDir(), "refs.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &fixture{t: t, p: p, now: t0}
}

func (f *fixture) records(evs ...events.Event) []events.Record {
	recs := make([]events.Record, len(evs))
	for i, e := range evs {
		f.seq++
		if e.ID == "" {
			e.ID = fmt.Sprintf("ev-%d", f.seq)
		}
		if e.Time.IsZero() {
			e.Time = f.now
		}
		recs[i] = events.Record{Seq: f.seq, Event: e}
	}
	return recs
}

func (f *fixture) apply(evs ...events.Event) Result {
	f.t.Helper()
	res, err := f.p.Apply(f.records(evs...))
	if err != nil {
		f.t.Fatal(err)
	}
	for _, inv := range res.Invalid {
		f.t.Fatalf("invalid event %s: %v", inv.ID, inv.Err)
	}
	return res
}

func (f *fixture) advance(d time.Duration) { f.now = f.now.Add(d) }

func (f *fixture) info(ref events.NodeRef) (NodeInfo, bool) {
	f.t.Helper()
	ni, ok, err := f.p.Get(ref)
	if err != nil {
		f.t.Fatal(err)
	}
	return ni, ok
}

// expect checks a node's count and presence; count -1 means "no record".
func (f *fixture) expect(ref events.NodeRef, count int, present bool) {
	f.t.Helper()
	ni, ok := f.info(ref)
	if count < 0 {
		if ok {
			f.t.Errorf("%s: want no record, have count %d present %v", ref, ni.Count, ni.Present)
		}
		return
	}
	if !ok {
		f.t.Errorf("%s: no record, want count %d present %v", ref, count, present)
		return
	}
	if int(ni.Count) != count || ni.Present != present {
		f.t.Errorf("%s: count %d present %v, want %d %v (holders %v)", ref, ni.Count, ni.Present, count, present, ni.Holders)
	}
}

func (f *fixture) candidates(at time.Time) []string {
	f.t.Helper()
	cs, err := f.p.Candidates(at, 1<<20)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.Node.String())
	}
	slices.Sort(out)
	return out
}

func (f *fixture) expectCandidates(at time.Time, want ...events.NodeRef) {
	f.t.Helper()
	var ws []string
	for _, w := range want {
		ws = append(ws, w.String())
	}
	slices.Sort(ws)
	if got := f.candidates(at); !slices.Equal(got, ws) {
		f.t.Errorf("candidates at %s:\n got %v\nwant %v", at.Sub(t0), got, ws)
	}
}

func (f *fixture) check() {
	f.t.Helper()
	ms, err := f.p.Check()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, m := range ms {
		f.t.Errorf("check: %s", m)
	}
	sameMismatches(f.t, f.p, false)
	f.lookupsAgree()
}

// lookupsAgree checks that Lookup, LookupMany, and the walks' iterations,
// give what Get gives without the holders.
func (f *fixture) lookupsAgree() {
	f.t.Helper()
	var refs []events.NodeRef
	var want []NodeInfo
	walked := map[string]NodeInfo{}
	for _, kind := range []events.NodeKind{events.NodeTag, events.NodeManifest, events.NodeLayer, events.NodeBlob} {
		err := f.p.ForEachIn(kind, "", func(ni NodeInfo) error { walked[ni.Node.String()] = ni; return nil })
		if err != nil {
			f.t.Fatal(err)
		}
	}
	err := f.p.ForEach(func(ni NodeInfo) error {
		got, ok, err := f.p.Lookup(ni.Node)
		if err != nil || !ok {
			return fmt.Errorf("lookup %s: %v %v", ni.Node, ok, err)
		}
		ni.Holders = nil
		if !reflect.DeepEqual(got, ni) {
			f.t.Errorf("lookup %s:\n got %+v\nwant %+v", ni.Node, got, ni)
		}
		refs, want = append(refs, ni.Node), append(want, ni)
		if w, ok := walked[ni.Node.String()]; ok && !reflect.DeepEqual(w, ni) {
			f.t.Errorf("walk %s:\n got %+v\nwant %+v", ni.Node, w, ni)
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	// And a node without a record, among them.
	refs, want = append(refs, manN("nowhere", "x")), append(want, NodeInfo{})
	err = f.p.LookupMany(refs, func(i int, ni NodeInfo, ok bool) error {
		if ok != (i < len(refs)-1) || !reflect.DeepEqual(ni, want[i]) {
			f.t.Errorf("lookup many %s (%v):\n got %+v\nwant %+v", refs[i], ok, ni, want[i])
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// collect re-checks and commits the removal of a node, as the collector does.
func (f *fixture) collect(ref events.NodeRef) error {
	f.t.Helper()
	cur, _ := f.p.Cursor()
	in, err := f.p.BeginCollect(fmt.Sprintf("i-%d", f.seq), ref, f.now, cur)
	if err != nil {
		return err
	}
	f.apply(collectedEv(in))
	return nil
}

func collectedEv(in Intent) events.Event {
	return events.Event{Kind: events.Collected, Collected: &events.CollectedRef{Node: in.Node, Purged: in.Purge, Intent: in.ID, AsOf: in.AsOf}}
}

func dg(s string) digest.Digest { return digest.FromString(s) }

func desc(s string) events.Descriptor { return events.Descriptor{Digest: dg(s), Size: int64(len(s))} }

func tagN(repo, tag string) events.NodeRef {
	return events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: tag}
}
func manN(repo, d string) events.NodeRef {
	return events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: dg(d)}
}
func layN(repo, d string) events.NodeRef {
	return events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: dg(d)}
}
func blobN(d string) events.NodeRef { return events.NodeRef{Kind: events.NodeBlob, Digest: dg(d)} }

func pushM(repo, d, tag string, blobs []string, children []string, subject string) events.Event {
	m := &events.Manifest{Repo: repo, Digest: dg(d), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(d)), Tag: tag}
	for _, b := range blobs {
		m.Blobs = append(m.Blobs, desc(b))
	}
	for _, c := range children {
		m.Children = append(m.Children, desc(c))
	}
	if len(children) > 0 {
		m.MediaType = "application/vnd.oci.image.index.v1+json"
	}
	if subject != "" {
		s := desc(subject)
		m.Subject = &s
	}
	return events.Event{Kind: events.ManifestPushed, Manifest: m}
}

func pushB(repo, d string) events.Event {
	return events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: dg(d), Size: int64(len(d))}}
}

func mountB(repo, d, from string) events.Event {
	return events.Event{Kind: events.BlobMounted, Blob: &events.Blob{Repo: repo, Digest: dg(d), Size: int64(len(d)), From: from}}
}

func setT(repo, tag, d string) events.Event {
	return events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: dg(d)}}
}

func delT(repo, tag string) events.Event {
	return events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: tag}}
}

func delD(repo, d string) events.Event {
	return events.Event{Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: repo, Digest: dg(d)}}
}

func touch(repo, d string) events.Event {
	return events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: repo, Digest: dg(d)}}
}

// collectedTag is the collector's Collected event for a tag, checked at asOf.
func collectedTag(tag events.NodeRef, asOf uint64) events.Event {
	return events.Event{Kind: events.Collected, Collected: &events.CollectedRef{Node: tag, AsOf: asOf}}
}

func delRepo(repo string) events.Event {
	return events.Event{Kind: events.RepositoryDeleted, Repo: &events.Repo{Name: repo}}
}
