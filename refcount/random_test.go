package refcount

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
)

var randomOps = flag.Int("refcount.ops", 4000, "operations in TestRandomAgainstModel")

// model is a plain in-memory account of what storage holds, independent
// of the projection: it recomputes every count from scratch.
type model struct {
	keep      bool
	tags      map[string]map[string]digest.Digest // repo → tag → manifest
	manifests map[string]map[digest.Digest]bool   // repo → present revisions
	refs      map[string]map[digest.Digest]*events.Manifest
	layers    map[string]map[digest.Digest]bool
	blobs     map[digest.Digest]bool
	// trash holds what a collected manifest referenced, and tombs the
	// collected layer links: a later statement of them heals them.
	trash map[string]*events.Manifest
	tombs map[string]bool
	// purged are the revisions a repository purge found present and that
	// were not pushed since: no roots, even under keep.
	purged map[string]bool
}

func newModel(keep bool) *model {
	return &model{keep: keep, trash: map[string]*events.Manifest{}, tombs: map[string]bool{}, purged: map[string]bool{}, tags: map[string]map[string]digest.Digest{}, manifests: map[string]map[digest.Digest]bool{},
		refs: map[string]map[digest.Digest]*events.Manifest{}, layers: map[string]map[digest.Digest]bool{}, blobs: map[digest.Digest]bool{}}
}

func sub[K comparable, V any](m map[string]map[K]V, repo string) map[K]V {
	if m[repo] == nil {
		m[repo] = map[K]V{}
	}
	return m[repo]
}

// revive brings back a collected manifest that an event names again, as
// the projection heals it: with its layer links and children.
func (m *model) revive(repo string, d digest.Digest) {
	k := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}.String()
	x, ok := m.trash[k]
	if !ok {
		return
	}
	delete(m.trash, k)
	if sub(m.manifests, repo)[d] || x == nil {
		return
	}
	y := *x
	y.Tag = ""
	m.do(events.Event{Kind: events.ManifestPushed, Manifest: &y})
}

func (m *model) do(e events.Event) {
	switch e.Kind {
	case events.BlobPushed, events.BlobMounted:
		delete(m.tombs, events.NodeRef{Kind: events.NodeLayer, Repo: e.Blob.Repo, Digest: e.Blob.Digest}.String())
		sub(m.layers, e.Blob.Repo)[e.Blob.Digest] = true
		m.blobs[e.Blob.Digest] = true
	case events.ManifestPushed:
		x := e.Manifest
		delete(m.trash, events.NodeRef{Kind: events.NodeManifest, Repo: x.Repo, Digest: x.Digest}.String())
		delete(m.purged, events.NodeRef{Kind: events.NodeManifest, Repo: x.Repo, Digest: x.Digest}.String())
		for _, c := range x.Children {
			m.revive(x.Repo, c.Digest)
		}
		for _, b := range x.Blobs {
			delete(m.tombs, events.NodeRef{Kind: events.NodeLayer, Repo: x.Repo, Digest: b.Digest}.String())
		}
		sub(m.manifests, x.Repo)[x.Digest] = true
		sub(m.refs, x.Repo)[x.Digest] = x
		m.blobs[x.Digest] = true
		for _, b := range x.Blobs {
			sub(m.layers, x.Repo)[b.Digest] = true
			m.blobs[b.Digest] = true
		}
		if x.Tag != "" {
			sub(m.tags, x.Repo)[x.Tag] = x.Digest
		}
	case events.TagSet:
		m.revive(e.Tag.Repo, e.Tag.Digest)
		sub(m.tags, e.Tag.Repo)[e.Tag.Name] = e.Tag.Digest
	case events.TagDeleted:
		delete(sub(m.tags, e.Tag.Repo), e.Tag.Name)
	case events.DigestDeleted:
		delete(m.trash, events.NodeRef{Kind: events.NodeManifest, Repo: e.Ref.Repo, Digest: e.Ref.Digest}.String())
		delete(m.tombs, events.NodeRef{Kind: events.NodeLayer, Repo: e.Ref.Repo, Digest: e.Ref.Digest}.String())
		if sub(m.manifests, e.Ref.Repo)[e.Ref.Digest] {
			delete(m.manifests[e.Ref.Repo], e.Ref.Digest)
		} else {
			delete(sub(m.layers, e.Ref.Repo), e.Ref.Digest)
		}
	case events.RepositoryDeleted:
		// Online: its tags expire (the collector's Collected events
		// follow), its revisions are roots no longer.
		for d := range m.manifests[e.Repo.Name] {
			m.purged[events.NodeRef{Kind: events.NodeManifest, Repo: e.Repo.Name, Digest: d}.String()] = true
		}
	case events.Collected:
		n := e.Collected.Node
		switch n.Kind {
		case events.NodeTag:
			delete(sub(m.tags, n.Repo), n.Name)
		case events.NodeManifest:
			m.trash[n.String()] = sub(m.refs, n.Repo)[n.Digest]
			delete(sub(m.manifests, n.Repo), n.Digest)
		case events.NodeLayer:
			m.tombs[n.String()] = true
			delete(sub(m.layers, n.Repo), n.Digest)
		case events.NodeBlob:
			delete(m.blobs, n.Digest)
		}
	}
}

type mstate struct {
	count   map[string]int
	present map[string]bool
	roots   map[string]bool
}

// state computes counts as the least fixpoint: a node is alive when present
// or held by an alive node; a present referrer is held by its present subject.
func (m *model) state() mstate {
	s := mstate{count: map[string]int{}, present: map[string]bool{}, roots: map[string]bool{}}
	for repo, ts := range m.tags {
		for t := range ts {
			s.present[tagN(repo, t).String()] = true
			s.roots[tagN(repo, t).String()] = true
		}
	}
	mref := func(repo string, d digest.Digest) events.NodeRef {
		return events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}
	}
	lref := func(repo string, d digest.Digest) events.NodeRef {
		return events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: d}
	}
	bref := func(d digest.Digest) events.NodeRef { return events.NodeRef{Kind: events.NodeBlob, Digest: d} }
	for repo, ms := range m.manifests {
		for d := range ms {
			s.present[mref(repo, d).String()] = true
			if m.keep && !m.purged[mref(repo, d).String()] {
				s.roots[mref(repo, d).String()] = true
			}
		}
	}
	for repo, ls := range m.layers {
		for d := range ls {
			s.present[lref(repo, d).String()] = true
		}
	}
	for d := range m.blobs {
		s.present[bref(d).String()] = true
	}
	for {
		alive := func(n events.NodeRef) bool { return s.present[n.String()] || s.count[n.String()] > 0 }
		count := map[string]int{}
		for repo, ts := range m.tags {
			for _, d := range ts {
				count[mref(repo, d).String()]++
			}
		}
		for repo, rs := range m.refs {
			for d, x := range rs {
				if !alive(mref(repo, d)) {
					continue
				}
				count[bref(d).String()]++
				seen := map[string]bool{}
				for _, b := range x.Blobs {
					if k := lref(repo, b.Digest).String(); !seen[k] {
						seen[k] = true
						count[k]++
					}
				}
				for _, c := range x.Children {
					if k := mref(repo, c.Digest).String(); !seen[k] {
						seen[k] = true
						count[k]++
					}
				}
				if x.Subject != nil && s.present[mref(repo, x.Subject.Digest).String()] && s.present[mref(repo, d).String()] {
					count[mref(repo, d).String()]++
				}
			}
		}
		// Layer links: present or held ones hold their blob.
		layerSet := map[string]events.NodeRef{}
		for repo, ls := range m.layers {
			for d := range ls {
				layerSet[lref(repo, d).String()] = lref(repo, d)
			}
		}
		for repo, rs := range m.refs {
			for d, x := range rs {
				if alive(mref(repo, d)) {
					for _, b := range x.Blobs {
						layerSet[lref(repo, b.Digest).String()] = lref(repo, b.Digest)
					}
				}
			}
		}
		for _, l := range layerSet {
			if alive(l) {
				count[bref(l.Digest).String()]++
			}
		}
		same := len(count) == len(s.count)
		for k, v := range count {
			if s.count[k] != v {
				same = false
			}
		}
		s.count = count
		if same {
			break
		}
	}
	// Forget what a manifest referenced once it is neither present nor held,
	// as the projection does.
	for repo, rs := range m.refs {
		for d := range rs {
			k := mref(repo, d).String()
			if !s.present[k] && s.count[k] == 0 {
				delete(rs, d)
			}
		}
	}
	return s
}

func TestRandomAgainstModel(t *testing.T) {
	for _, policy := range []Policy{PolicyDelete, PolicyKeep} {
		t.Run(string(policy), func(t *testing.T) {
			f := newFixture(t, Options{Untagged: policy})
			m := newModel(policy == PolicyKeep)
			rng := rand.New(rand.NewPCG(1, uint64(len(policy))))
			repos := []string{"a", "b", "c/d"}
			tags := []string{"v1", "v2", "latest"}
			var pushed []string // manifest names, in push order, so children form a DAG
			// bodies keeps what each repo@name was first pushed with: the
			// same digest always names the same content.
			bodies := map[string]*events.Manifest{}
			blob := func() string { return fmt.Sprintf("blob%d", rng.IntN(12)) }
			far := t0.Add(1000 * hour)
			ops := 0
			for ops < *randomOps {
				var batch []events.Event
				n := 1 + rng.IntN(8)
				for i := 0; i < n; i++ {
					repo := repos[rng.IntN(len(repos))]
					switch r := rng.IntN(100); {
					case r < 20:
						batch = append(batch, pushB(repo, blob()))
					case r < 25:
						batch = append(batch, mountB(repo, blob(), repos[rng.IntN(len(repos))]))
					case r < 50:
						name := fmt.Sprintf("man%d", len(pushed))
						if len(pushed) > 0 && rng.IntN(3) == 0 {
							name = pushed[rng.IntN(len(pushed))] // re-push
						} else {
							pushed = append(pushed, name)
						}
						var blobs, children []string
						for j := rng.IntN(4); j > 0; j-- {
							blobs = append(blobs, blob())
						}
						idx := slices.Index(pushed, name)
						for j := rng.IntN(3); j > 0 && idx > 0; j-- {
							children = append(children, pushed[rng.IntN(idx)])
						}
						subject := ""
						if idx > 0 && rng.IntN(4) == 0 {
							subject = pushed[rng.IntN(idx)]
						}
						tag := ""
						if rng.IntN(2) == 0 {
							tag = tags[rng.IntN(len(tags))]
						}
						if x := bodies[repo+"@"+name]; x != nil {
							// Content is immutable: a re-push states the same references.
							e := events.Event{Kind: events.ManifestPushed, Manifest: new(events.Manifest)}
							*e.Manifest = *x
							e.Manifest.Tag = tag
							batch = append(batch, e)
						} else {
							e := pushM(repo, name, tag, blobs, children, subject)
							body := *e.Manifest
							body.Tag = ""
							bodies[repo+"@"+name] = &body
							batch = append(batch, e)
						}
					case r < 62:
						if len(pushed) > 0 {
							batch = append(batch, setT(repo, tags[rng.IntN(len(tags))], pushed[rng.IntN(len(pushed))]))
						}
					case r < 74:
						batch = append(batch, delT(repo, tags[rng.IntN(len(tags))]))
					case r < 86:
						if len(pushed) > 0 && rng.IntN(2) == 0 {
							batch = append(batch, delD(repo, pushed[rng.IntN(len(pushed))]))
						} else {
							batch = append(batch, delD(repo, blob()))
						}
					case r < 90:
						batch = append(batch, touch(repo, blob()))
					case r < 91:
						batch = append(batch, delRepo(repo))
						for _, tg := range tags { // as the collector removes the purged tags
							batch = append(batch, collectedTag(tagN(repo, tg), 1<<62))
						}
					default:
						// Collect a current candidate, as the collector would.
						if len(batch) > 0 { // re-check against everything before it
							f.applyTwice(f.records(batch...))
							for _, e := range batch {
								m.do(e)
								m.state()
								m.state() // forget, event by event, what died
							}
							ops += len(batch)
							batch = nil
						}
						cs, err := f.p.Candidates(far, 64)
						if err != nil {
							t.Fatal(err)
						}
						if len(cs) == 0 {
							continue
						}
						// A few at a time: purges leave their garbage to the
						// collector, which must keep up with it.
						f.now = far
						rng.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
						for _, c := range cs[:min(len(cs), 1+rng.IntN(6))] {
							cur, _ := f.p.Cursor()
							in, err := f.p.BeginCollect("i", c.Node, far, cur)
							if err != nil {
								t.Fatalf("candidate %s refused: %v", c.Node, err)
							}
							batch = append(batch, collectedEv(in))
						}
						f.now = t0
					}
				}
				if len(batch) == 0 {
					continue
				}
				ops += len(batch)
				f.applyTwice(f.records(batch...))
				for _, e := range batch {
					m.do(e)
					m.state() // forget, event by event, what died
				}
				f.compare(m)
			}
			f.check()
			f.replaySplits(Options{Untagged: policy})
		})
	}
}

// applyTwice applies recs twice (the second time, all skipped), the
// first time with the reader ahead of Apply on every other call
// (prefetch.go), racing it.
func (f *fixture) applyTwice(recs []events.Record) {
	f.t.Helper()
	f.log = append(f.log, recs...)
	min := prefetchMin
	if len(f.log)%2 == 0 {
		prefetchMin = 1
	}
	defer func() { prefetchMin = min }()
	for i := 0; i < 2; i++ {
		res, err := f.p.Apply(recs)
		if err != nil {
			f.t.Fatal(err)
		}
		if len(res.Invalid) > 0 {
			f.t.Fatalf("invalid: %v", res.Invalid[0].Err)
		}
	}
}

// compare checks every node of the model and of the projection.
func (f *fixture) compare(m *model) {
	f.t.Helper()
	s := m.state()
	got := map[string]NodeInfo{}
	for _, ni := range f.dumpInfos() {
		got[ni.Node.String()] = ni
	}
	keys := map[string]bool{}
	for k := range s.present {
		keys[k] = true
	}
	for k, c := range s.count {
		if c > 0 {
			keys[k] = true
		}
	}
	for k := range got {
		keys[k] = true
	}
	for k := range keys {
		ni, ok := got[k]
		wantAlive := s.present[k] || s.count[k] > 0
		if ok != wantAlive {
			f.t.Fatalf("seq %d: %s: record %v %+v, model alive %v (count %d present %v)", f.seq, k, ok, ni, wantAlive, s.count[k], s.present[k])
		}
		if !ok {
			continue
		}
		if int(ni.Count) != s.count[k] || ni.Present != s.present[k] {
			f.t.Fatalf("seq %d: %s: count %d present %v, model %d %v (holders %v)", f.seq, k, ni.Count, ni.Present, s.count[k], s.present[k], ni.Holders)
		}
		wantQueued := s.present[k] && s.count[k] == 0 && !s.roots[k]
		if (ni.Eligible != nil) != wantQueued {
			f.t.Fatalf("seq %d: %s: queued %v, model %v", f.seq, k, ni.Eligible != nil, wantQueued)
		}
	}
}

func (f *fixture) dumpInfos() []NodeInfo {
	var out []NodeInfo
	if err := f.p.forEachInfo(func(ni NodeInfo) error { out = append(out, ni); return nil }); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// replaySplits applies everything the fixture applied again, into fresh
// files, one event per batch, in batches of 7, and all at once: the dumps
// must equal the original's, whatever the batch boundaries. The reader
// is ahead of Apply in every batch (prefetch.go).
func (f *fixture) replaySplits(opts Options) {
	f.t.Helper()
	regtest.Override(f.t, &prefetchMin, 1)
	var want bytes.Buffer
	if err := f.p.Dump(&want); err != nil {
		f.t.Fatal(err)
	}
	for _, split := range []int{1, 7, len(f.log)} {
		g := newFixture(f.t, opts)
		for i := 0; i < len(f.log); i += split {
			if _, err := g.p.Apply(f.log[i:min(i+split, len(f.log))]); err != nil {
				f.t.Fatal(err)
			}
		}
		var got bytes.Buffer
		if err := g.p.Dump(&got); err != nil {
			f.t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			f.t.Fatalf("replay in batches of %d differs from the original", split)
		}
	}
}
