package partsim

import (
	"math/bits"
	"slices"
)

// repoSide is one placement of the repositories on n partitions, with what
// each partition holds.
type repoSide struct {
	n      int
	placed bool
	part   []uint16
	// Repository-scoped nodes (tags, revisions, layer links) and their
	// keys; events routed to the partition.
	objs, bytes, events []int64
	// held counts the blobs some node of the partition references (the
	// copies the repository-only scheme keeps); excl those referenced from
	// this partition alone; copyBytes the copies' records and in-edges.
	held, excl, copyBytes []int64
	// local counts the statements whose digest partition has the same
	// index (one machine when repository and digest partition i share it).
	local  int64
	digest *digestSide
	words  int
	off    int // this side's words in a share's masks
	pool   []uint64
}

// digestSide is the digest partitioning into n ranges.
type digestSide struct {
	n int
	// objs and bytes: blob nodes and their keys (records and in-edges);
	// stmts: statements received; writes: those that add an edge.
	objs, bytes, stmts, writes []int64
	seen                       []uint64
	distinct                   int64
	perPush                    []int64 // histogram of distinct partitions per push
}

// Totals counts the registry as generated.
type Totals struct {
	Repos, Pushes                        int64
	Tags, Manifests, Links, Blobs        int64
	RepoEvents, Statements, EdgeWrites   int64
	ChildEdges, SubjectEdges, CrossLocal int64
	// InSubKeys counts the in-edges kept as in/ sub-keys, their node's
	// record having no room left (inlineHolders).
	InSubKeys          int64
	LargestRepoObjects int64
}

// Objects is the number of projection nodes.
func (t Totals) Objects() int64 { return t.Tags + t.Manifests + t.Links + t.Blobs }

type accountant struct {
	cfg       *Config
	sides     []*repoSide
	digests   []*digestSide
	poolCount []int32
	cur       []int
	maskWords int
	// the current repository
	rObjs, rBytes, rEvents int64
	pushNo                 uint64
	t                      Totals
}

func newAccountant(cfg *Config, sides []*repoSide, poolSize int) *accountant {
	a := &accountant{cfg: cfg, sides: sides, poolCount: make([]int32, poolSize), cur: make([]int, len(sides))}
	byN := map[int]*digestSide{}
	for _, s := range sides {
		if byN[s.n] == nil {
			d := &digestSide{n: s.n, objs: make([]int64, s.n), bytes: make([]int64, s.n),
				stmts: make([]int64, s.n), writes: make([]int64, s.n), seen: make([]uint64, s.n),
				perPush: make([]int64, s.n+1)}
			byN[s.n] = d
			a.digests = append(a.digests, d)
		}
		s.digest = byN[s.n]
		s.objs, s.bytes, s.events = make([]int64, s.n), make([]int64, s.n), make([]int64, s.n)
		s.held, s.excl, s.copyBytes = make([]int64, s.n), make([]int64, s.n), make([]int64, s.n)
		s.words = (s.n + 63) / 64
		s.off = a.maskWords
		a.maskWords += s.words
		s.pool = make([]uint64, poolSize*s.words)
	}
	return a
}

func (a *accountant) startRepo(r *repo) {
	for i, s := range a.sides {
		a.cur[i] = int(s.part[r.index])
	}
	a.t.Repos++
}

// blobRecord is the length of a blob's record, key and leaf header.
func (a *accountant) blobRecord(leased bool, size int64) int64 {
	rec := record{count: 1, lease: leased, seqLen: a.cfg.SeqLen, size: size, origin: true}
	return int64(blobKeyLen + rec.len() + leafOverhead)
}

func (a *accountant) createBlob(h uint64, leased bool, size int64) {
	a.t.Blobs++
	rb := a.blobRecord(leased, size)
	for _, d := range a.digests {
		q := DigestPartition(h, d.n)
		d.objs[q]++
		d.bytes[q] += rb
	}
}

// statement is one cross-partition statement about blob h; a write adds
// the in-edge of edgeLen bytes (inEdgeLen) to the blob.
func (a *accountant) statement(h uint64, write bool, edgeLen int) {
	a.t.Statements++
	if write {
		a.t.EdgeWrites++
	}
	for _, d := range a.digests {
		q := DigestPartition(h, d.n)
		d.stmts[q]++
		if write {
			d.writes[q]++
			d.bytes[q] += int64(edgeLen + versionLen)
		}
		if d.seen[q] != a.pushNo+1 {
			d.seen[q] = a.pushNo + 1
			d.distinct++
		}
	}
	for i, s := range a.sides {
		if DigestPartition(h, s.n) == a.cur[i] {
			s.local++
		}
		if write {
			s.copyBytes[a.cur[i]] += int64(edgeLen)
		}
	}
}

// blobEdge is the length of b's next in-edge, from a holder key of length
// from, and counts it.
func (a *accountant) blobEdge(b blob, from int) int {
	o := 0
	if idx, ok := b.ref.pool(); ok {
		o = int(a.poolCount[idx]) - 1 // link counted it already
	} else if b.sh != nil {
		b.sh.holders++
		o = b.sh.holders
	}
	if o >= inlineHolders {
		a.t.InSubKeys++
	}
	return inEdgeLen(o, blobKeyLen, from)
}

// holds records that the current repository's partition references b.
func (a *accountant) holds(b blob, fresh, leased bool) {
	if fresh {
		if _, ok := b.ref.pool(); !ok {
			for i, s := range a.sides {
				p := a.cur[i]
				s.held[p]++
				s.excl[p]++
				s.copyBytes[p] += a.blobRecord(leased, b.size)
			}
			return
		}
	}
	for i, s := range a.sides {
		var mask []uint64
		if idx, ok := b.ref.pool(); ok {
			mask = s.pool[idx*s.words : (idx+1)*s.words]
		} else {
			if b.sh == nil {
				continue // not shareable: held by its origin alone, counted when fresh
			}
			if b.sh.masks == nil {
				b.sh.masks = make([]uint64, a.maskWords)
				for _, s2 := range a.sides {
					o := int(s2.part[b.origin])
					b.sh.masks[s2.off+o/64] |= 1 << (o % 64)
				}
			}
			mask = b.sh.masks[s.off : s.off+s.words]
		}
		p := a.cur[i]
		if mask[p/64]&(1<<(p%64)) != 0 {
			continue
		}
		n, only := 0, -1
		for w, m := range mask {
			if m != 0 {
				n += bits.OnesCount64(m)
				only = w*64 + bits.TrailingZeros64(m)
			}
		}
		if n == 1 {
			s.excl[only]--
		}
		mask[p/64] |= 1 << (p % 64)
		s.held[p]++
		if n == 0 {
			s.excl[p]++
		}
		s.copyBytes[p] += a.blobRecord(leased, b.size)
	}
}

func (a *accountant) link(r *repo, b blob, fresh, mounted bool) {
	a.rEvents++
	h := b.ref.hash()
	if fresh {
		a.createBlob(h, true, b.size)
	}
	if idx, ok := b.ref.pool(); ok {
		a.poolCount[idx]++
	}
	a.statement(h, true, a.blobEdge(b, repoDigestKeyLen(len(r.name))))
	a.holds(b, fresh, true)
}

func (a *accountant) manifest(r *repo, m *manifest, fresh bool) {
	a.rEvents++
	mk := repoDigestKeyLen(len(r.name))
	h := m.digest.ref.hash()
	if fresh {
		a.createBlob(h, false, m.size)
	}
	a.statement(h, true, a.blobEdge(m.digest, mk))
	a.holds(m.digest, fresh, false)
	body := newBody(m.size)
	// The in-edges of its links, its children and itself (from its
	// subject) are counted with their nodes, at endRepo.
	for _, b := range m.blobs {
		a.statement(b.ref.hash(), false, 0)
		body.blob(b.size)
	}
	for _, c := range m.children {
		a.t.ChildEdges++
		body.child(c.size)
	}
	if m.subject != nil {
		a.t.SubjectEdges++
		// The referrer marker under the subject.
		a.rBytes += int64(subKeyLen(mk, mk) + leafOverhead)
		body.subject(m.subject.size)
	}
	a.rBytes += int64(subKeyLen(mk, 0) + body.n + leafOverhead)
}

func (a *accountant) tag(r *repo, name string, m *manifest, first bool) {
	a.rEvents++
	if first {
		a.rBytes += int64(subKeyLen(repoDigestKeyLen(len(r.name)), repoKeyLen(len(r.name), len(name))) + 1 + leafOverhead)
	}
}

func (a *accountant) endPush(*repo) {
	for _, d := range a.digests {
		d.perPush[min(int(d.distinct), d.n)]++
		d.distinct = 0
	}
	a.pushNo++
	a.t.Pushes++
}

func (a *accountant) endRepo(r *repo) {
	mk := repoDigestKeyLen(len(r.name))
	tagsOf := map[*manifest][]int{} // the key lengths of the tags holding a revision
	for name, m := range r.tags {
		tk := repoKeyLen(len(r.name), len(name))
		rec := record{zero: true, seqLen: a.cfg.SeqLen, origin: true}
		rec.edge(mk)
		a.rBytes += int64(tk+rec.len()+leafOverhead) + int64(tk+stampLen+leafOverhead)
		tagsOf[m] = append(tagsOf[m], tk)
	}
	for _, m := range r.revs {
		rec := record{count: uint64(m.count), lease: true, zero: m.count == 0, seqLen: a.cfg.SeqLen,
			size: m.size, mediaType: m.mediaType, heard: true, origin: true}
		rec.edge(blobKeyLen)
		for range len(m.blobs) + len(m.children) {
			rec.edge(mk)
		}
		if m.subject != nil {
			rec.edge(mk)
		}
		a.rBytes += int64(mk + rec.len() + leafOverhead)
		// Its holders: its tags, then its index and its subject (the
		// order they came in matters only beyond inlineHolders).
		tags := tagsOf[m]
		slices.Sort(tags) // map order: deterministic all the same
		for o := range int(m.count) {
			from := mk
			if o < len(tags) {
				from = tags[o]
			}
			a.rBytes += int64(inEdgeLen(o, mk, from))
		}
		a.t.InSubKeys += subHolders(int(m.count))
	}
	for _, l := range r.links {
		rec := record{count: uint64(l.count), lease: true, zero: l.count == 0, seqLen: a.cfg.SeqLen,
			size: l.size, heard: true, origin: true}
		rec.edge(blobKeyLen)
		a.rBytes += int64(mk+rec.len()+leafOverhead) + int64(inEdgesLen(int(l.count), mk, mk))
		a.t.InSubKeys += subHolders(int(l.count))
	}
	objs := int64(len(r.tags) + len(r.revs) + len(r.links))
	a.t.Tags += int64(len(r.tags))
	a.t.Manifests += int64(len(r.revs))
	a.t.Links += int64(len(r.links))
	a.t.RepoEvents += a.rEvents
	a.t.LargestRepoObjects = max(a.t.LargestRepoObjects, objs)
	for i, s := range a.sides {
		p := a.cur[i]
		s.objs[p] += objs
		s.bytes[p] += a.rBytes
		s.events[p] += a.rEvents
	}
	a.rBytes, a.rEvents = 0, 0
}

// finish adds what only the end knows: the width of the counts of shared
// base layers.
func (a *accountant) finish() {
	for idx, c := range a.poolCount {
		if extra := uvarintLen(uint64(c)) - 1; c > 0 && extra > 0 {
			h := (poolBit | blobRef(idx)).hash()
			for _, d := range a.digests {
				d.bytes[DigestPartition(h, d.n)] += int64(extra)
			}
		}
	}
}
