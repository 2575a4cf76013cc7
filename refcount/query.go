package refcount

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Candidate is a node that nothing holds and whose lease has expired.
type Candidate struct {
	Node events.NodeRef
	// Since is when the node became unheld.
	Since time.Time
	// EligibleAt is when it became collectable (after lease and grace).
	EligibleAt time.Time
	Size       int64
	// Origin is the event source that last stated the node present ("" if
	// unknown): the collector asks that source's owner, if it has one.
	Origin string
}

// Candidates returns up to limit nodes eligible for collection at now,
// oldest first.
func (p *Projection) Candidates(now time.Time, limit int) ([]Candidate, error) {
	return p.CandidatesOf(now, limit, nil)
}

// CandidatesOf is Candidates restricted to the node kinds keep accepts
// (all of them when keep is nil): the others are passed over, not counted
// against limit.
func (p *Projection) CandidatesOf(now time.Time, limit int, keep func(events.NodeKind) bool) ([]Candidate, error) {
	return p.CandidatesSpread(now, limit, limit, 0, keep, nil)
}

// CandidatesSpread is CandidatesOf choosing its up to limit nodes among the
// window oldest eligible ones (window ≥ limit), spread over the groups that
// group names (nil: one group): a node of each group in turn, width groups
// at a time (≤ 0: all), the groups in the order of their oldest node, each
// group's oldest first; a group that runs out gives its turn to the next.
// The first group holds the oldest eligible node, so it is chosen in every
// call; within a group the order stays the queue's.
func (p *Projection) CandidatesSpread(now time.Time, limit, window, width int, keep func(events.NodeKind) bool, group func(events.NodeRef) string) ([]Candidate, error) {
	window = max(window, limit)
	type entry struct {
		at  int64
		key []byte
		ref events.NodeRef
	}
	var out []Candidate
	err := p.db.View(func(tx *bolt.Tx) error {
		var groups [][]entry
		index := map[string]int{}
		seen := 0
		c := tx.Bucket(bucketQueue).Cursor()
		for k, _ := c.First(); k != nil && seen < window; k, _ = c.Next() {
			if len(k) < 9 {
				return fmt.Errorf("%w: queue key", ErrCorrupt)
			}
			at := int64(binary.BigEndian.Uint64(k))
			if at > now.UnixNano() {
				break
			}
			// The kind first, from the key's first byte: what keep passes
			// over costs no parse (a backlog of one kind can be long),
			// only the check of its length, which finds a damaged key.
			if kind, ok := keyKind(k[8:]); ok && keep != nil && !keep(kind) && nodeKeyLen(k[8:]) == len(k)-8 {
				continue
			}
			ref, err := parseNodeKey(k[8:])
			if err != nil {
				return err
			}
			seen++
			var name string
			if group != nil {
				name = group(ref)
			}
			i, ok := index[name]
			if !ok {
				i = len(groups)
				index[name] = i
				groups = append(groups, nil)
			}
			groups[i] = append(groups[i], entry{at: at, key: k[8:], ref: ref})
		}
		nodes := tx.Bucket(bucketNodes)
		origins := newOriginNames(tx)
		// The groups take turns, width of them at a time: one that runs
		// out gives its place to the next one in order.
		if width <= 0 || width > len(groups) {
			width = len(groups)
		}
		turns := make([]int, width) // indexes into groups
		for i := range turns {
			turns[i] = i
		}
		nextGroup, pos := width, make([]int, len(groups))
		for len(out) < limit && len(turns) > 0 {
			for i := 0; i < len(turns) && len(out) < limit; {
				g := turns[i]
				e := groups[g][pos[g]]
				pos[g]++
				n, err := decodeNode(nodes.Get(e.key))
				if err != nil {
					return err
				}
				out = append(out, Candidate{Node: e.ref, Since: time.Unix(0, n.zeroSince).UTC(),
					EligibleAt: time.Unix(0, e.at).UTC(), Size: n.size, Origin: origins.name(n.origin)})
				switch {
				case pos[g] < len(groups[g]):
					i++
				case nextGroup < len(groups):
					turns[i] = nextGroup
					nextGroup++
					i++
				default:
					turns = append(turns[:i], turns[i+1:]...)
				}
			}
		}
		return nil
	})
	return out, err
}

// Holder is one incoming edge of a node.
type Holder struct {
	Node events.NodeRef `json:"node"`
	Edge string         `json:"edge"`
}

// NodeInfo is everything the projection knows about one node.
type NodeInfo struct {
	Node     events.NodeRef   `json:"node"`
	Present  bool             `json:"present"`
	Count    uint64           `json:"count"`
	Holders  []Holder         `json:"holders,omitempty"`
	Holds    []events.NodeRef `json:"holds,omitempty"`
	Lease    *time.Time       `json:"lease,omitempty"`
	Since    *time.Time       `json:"since,omitempty"`
	Eligible *time.Time       `json:"eligible,omitempty"`
	LastSeq  uint64           `json:"lastSeq"`
	// Pinned is set for a manifest kept as a root because what it
	// references is not known (its manifest could not be read).
	Pinned bool `json:"pinned,omitempty"`
	// Heard is the time of the newest event that stated the object present.
	Heard     *time.Time `json:"heard,omitempty"`
	Size      int64      `json:"size,omitempty"`
	MediaType string     `json:"mediaType,omitempty"`
	// Origin is the event source that last stated the node present.
	Origin string `json:"origin,omitempty"`
}

func timePtr(ns int64) *time.Time {
	if ns == 0 {
		return nil
	}
	t := time.Unix(0, ns).UTC()
	return &t
}

// info is a node's NodeInfo; with holders false, Holders stays nil and the
// node's in-edges are not read.
func (p *Projection) info(tx *bolt.Tx, k []byte, n *node, holders bool) (NodeInfo, error) {
	ref, err := parseNodeKey(k)
	if err != nil {
		return NodeInfo{}, err
	}
	ni := NodeInfo{Node: ref, Present: n.present(), Count: n.count, Lease: timePtr(n.lease),
		Eligible: timePtr(n.queuedAt), LastSeq: n.lastSeq, Pinned: n.flags&flagPinned != 0, Heard: timePtr(n.heard), Size: n.size, MediaType: n.mediaType,
		Origin: newOriginNames(tx).name(n.origin)}
	if n.count == 0 {
		ni.Since = timePtr(n.zeroSince)
	}
	if !holders {
		ni.Holds = holds(n)
		return ni, nil
	}
	err = forHolders(tx.Bucket(bucketNodes).Cursor(), k, n, func(from []byte, kind byte) error {
		h, err := parseNodeKey(from)
		if err != nil {
			return err
		}
		ni.Holders = append(ni.Holders, Holder{Node: h, Edge: edgeNames[kind]})
		return nil
	})
	if err != nil {
		return ni, err
	}
	ni.Holds = holds(n)
	return ni, nil
}

// holds is the nodes n declares edges to, its subject apart.
func holds(n *node) (out []events.NodeRef) {
	for _, e := range n.decl {
		if r, err := parseNodeKey(e.to); err == nil && e.kind != edgeSubject {
			out = append(out, r)
		}
	}
	return out
}

// Get returns what the projection knows about a node; ok is false when it
// has no record of it.
func (p *Projection) Get(ref events.NodeRef) (ni NodeInfo, ok bool, err error) {
	return p.get(ref, true)
}

// Lookup is Get without the holders: Holders is nil, and the node's
// incoming edges are not read. It is for walks that look up every node
// they pass (a reconcile pass, the storage check), where a node held by
// many others would cost as many reads and allocations.
func (p *Projection) Lookup(ref events.NodeRef) (ni NodeInfo, ok bool, err error) {
	return p.get(ref, false)
}

// LookupMany is Lookup of every ref in one read transaction, for a caller
// that looks up many nodes at once (the storage check of a round): fn is
// called with each ref's index in refs and what Lookup would return, in
// order, and its error ends the walk.
func (p *Projection) LookupMany(refs []events.NodeRef, fn func(i int, ni NodeInfo, ok bool) error) error {
	return p.db.View(func(tx *bolt.Tx) error {
		for i, ref := range refs {
			ni, ok, err := p.getIn(tx, ref, false)
			if err != nil {
				return err
			}
			if err := fn(i, ni, ok); err != nil {
				return err
			}
		}
		return nil
	})
}

func (p *Projection) get(ref events.NodeRef, holders bool) (ni NodeInfo, ok bool, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		ni, ok, err = p.getIn(tx, ref, holders)
		return err
	})
	return ni, ok, err
}

func (p *Projection) getIn(tx *bolt.Tx, ref events.NodeRef, holders bool) (ni NodeInfo, ok bool, err error) {
	k := nodeKey(ref)
	if k == nil {
		return ni, false, fmt.Errorf("refcount: unknown node kind %q", ref.Kind)
	}
	v := tx.Bucket(bucketNodes).Get(k)
	if v == nil {
		return ni, false, nil
	}
	n, err := decodeNode(v)
	if err != nil {
		return ni, false, err
	}
	ni, err = p.info(tx, k, n, holders)
	return ni, err == nil, err
}

// Dump writes every node as one JSON line, in key order: kind, identity,
// count, holders and lease. Two projections of the same log dump the same
// bytes.
func (p *Projection) Dump(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	err := p.forEachInfo(func(ni NodeInfo) error {
		ni.LastSeq, ni.Heard, ni.Origin = 0, nil, "" // the collector's bookkeeping, not graph state
		return enc.Encode(ni)
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// forEachInfo calls fn for every node, in key order, in one read transaction.
func (p *Projection) forEachInfo(fn func(NodeInfo) error) error {
	return p.db.View(func(tx *bolt.Tx) error {
		return forEachNode(tx, func(k []byte, _ events.NodeRef, n *node) error {
			ni, err := p.info(tx, k, n, true)
			if err != nil {
				return err
			}
			return fn(ni)
		})
	})
}

// Mismatch is one difference Check found between a stored value and the
// value recomputed from the declarations.
type Mismatch struct {
	Node   events.NodeRef `json:"node"`
	What   string         `json:"what"`
	Stored uint64         `json:"stored"`
	Want   uint64         `json:"want"`
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s: %s stored %d, recounted %d", m.Node, m.What, m.Stored, m.Want)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// Manifest returns what a manifest revision references, if the projection holds it.
func (p *Projection) Manifest(ref events.NodeRef) (m events.Manifest, ok bool, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		k := nodeKey(ref)
		raw := tx.Bucket(bucketNodes).Get(subKey(k, subBody, nil))
		if raw == nil {
			return nil
		}
		ok = true
		m, err = decodeBody(k, raw)
		return err
	})
	return m, ok, err
}

// HoldsRepository reports whether the projection has any node of repo
// (a tag, present or in the time machine; a revision; a layer link; a
// label or legacy image): whether the repository holds anything at all as
// the log tells it. Unlinked revisions in the trash do not count.
func (p *Projection) HoldsRepository(repo string) (bool, error) {
	held := false
	err := p.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketNodes).Cursor()
		for _, kind := range []byte{kTag, kManifest, kLayer, kLabel, kLegacy} {
			prefix := repoPrefix(kind, repo)
			if k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
				held = true
				return nil
			}
		}
		return nil
	})
	return held, err
}
