package refcount

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Why explains why a node is alive: the chain of holders from a root down
// to it (a tag, or a manifest revision under the keep policy), or the lease
// that protects it, or that nothing does.
type Why struct {
	Node events.NodeRef `json:"node"`
	// Chain runs from a root to the node; empty when nothing holds it.
	Chain []Holder `json:"chain,omitempty"`
	// Root says what kind of root the chain starts at: "tag", "untagged
	// revision (keep policy)", or "present" for a held node whose chain
	// leads to something present but unheld (leased, for instance).
	Root string `json:"root,omitempty"`
	// Lease is when the node's own lease ends, if it runs.
	Lease *time.Time `json:"lease,omitempty"`
	// Eligible is when it becomes collectable, if it is queued.
	Eligible *time.Time `json:"eligible,omitempty"`
	Present  bool       `json:"present"`
	// TimeMachine is set when the chain starts at a tag that was removed
	// and is still recoverable: it holds the chain until TimeMachine.Until.
	TimeMachine *TagLife `json:"timeMachine,omitempty"`
}

// ErrUnknownNode is returned by the audit queries for a node the
// projection has no record of.
var ErrUnknownNode = errors.New("refcount: no such node")

// Why finds the shortest chain of holders from a root to the node.
func (p *Projection) Why(ref events.NodeRef) (Why, error) {
	w := Why{Node: ref}
	start := nodeKey(ref)
	if start == nil {
		return w, fmt.Errorf("refcount: unknown node kind %q", ref.Kind)
	}
	err := p.db.View(func(tx *bolt.Tx) error {
		nodes := tx.Bucket(bucketNodes)
		v := nodes.Get(start)
		if v == nil {
			return fmt.Errorf("%w: %s", ErrUnknownNode, ref)
		}
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		w.Present, w.Lease, w.Eligible = n.present(), timePtr(n.lease), timePtr(n.queuedAt)
		// Breadth first up the holders.
		type step struct {
			key  string
			next string // the node this one holds, towards ref
			edge byte
		}
		seen := map[string]step{string(start): {key: string(start)}}
		queue := []string{string(start)}
		t := &txn{p: p, tx: tx}
		for len(queue) > 0 {
			k := queue[0]
			queue = queue[1:]
			kn, err := decodeNode(nodes.Get([]byte(k)))
			if err != nil {
				return err
			}
			root := ""
			switch {
			case kn.present() && k[0] == kTag:
				root = "tag"
			case kn.flags&flagRetained != 0:
				root = "tag in the time machine (restorable)"
				if w.TimeMachine, err = readTagLife(tx.Bucket(bucketTags), []byte(k)); err != nil {
					return err
				}
			case kn.present() && kn.flags&flagPinned != 0:
				root = "unverified manifest (kept until reconciled)"
			case kn.present() && t.isRoot([]byte(k), kn):
				root = "untagged revision (keep policy)"
			case kn.present() && kn.count == 0 && k != string(start):
				root = "present"
			}
			if root != "" {
				w.Root = root
				for cur := k; cur != string(start); {
					s := seen[cur]
					from, _ := parseNodeKey([]byte(cur))
					w.Chain = append(w.Chain, Holder{Node: from, Edge: edgeNames[s.edge]})
					cur = s.next
				}
				w.Chain = append(w.Chain, Holder{Node: ref})
				return nil
			}
			if err := forHolders(nodes.Cursor(), []byte(k), kn, func(from []byte, e byte) error {
				if _, ok := seen[string(from)]; ok || nodes.Get(from) == nil {
					return nil
				}
				seen[string(from)] = step{key: string(from), next: k, edge: e}
				queue = append(queue, string(from))
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return w, err
}

// Impact is what a deletion would free once the collector has run its
// course: every node that would go, and the bytes of blob data purged.
type Impact struct {
	Deleted []events.NodeRef `json:"deleted"`
	Nodes   int              `json:"nodes"`
	Bytes   int64            `json:"bytes"`
	// RecoverableUntil is set for a tag that its repository's time machine
	// keeps (a deleted one, or one already there): nothing it holds goes
	// before then, and `refgc restore REPO:TAG` brings it back meanwhile.
	RecoverableUntil *time.Time `json:"recoverableUntil,omitempty"`
}

// errRollback ends a simulation's transaction without committing it.
var errRollback = errors.New("rollback")

// Impact simulates deleting a tag, or a manifest revision by digest, and
// the collection that would follow (ignoring leases and grace), inside a
// write transaction that is rolled back: nothing changes.
func (p *Projection) Impact(ref events.NodeRef, now time.Time) (Impact, error) {
	var im Impact
	if ref.Kind != events.NodeTag && ref.Kind != events.NodeManifest {
		return im, fmt.Errorf("refcount: impact of a %s: only tags and manifests can be deleted", ref.Kind)
	}
	err := p.db.Update(func(tx *bolt.Tx) error {
		t := p.newTxn(tx)
		t.now = now.UnixNano()
		k := nodeKey(ref)
		if !t.exists(k) {
			return fmt.Errorf("%w: %s", ErrUnknownNode, ref)
		}
		// Only what becomes unheld because of this deletion counts: note
		// what is already queued.
		before := map[string]bool{}
		c := t.queue.Cursor()
		for qk, _ := c.First(); qk != nil; qk, _ = c.Next() {
			before[string(qk[8:])] = true
		}
		if ref.Kind == events.NodeManifest {
			// The registry deletes the tags that point at a revision it deletes.
			var tags [][]byte
			if err := forHolders(t.nodes.Cursor(), k, t.get(k), func(from []byte, kind byte) error {
				if kind == edgeTag {
					tags = append(tags, append([]byte(nil), from...))
				}
				return nil
			}); err != nil {
				return err
			}
			for _, tk := range tags {
				r, _ := parseNodeKey(tk)
				im.Deleted = append(im.Deleted, r)
				t.setPresent(tk, t.get(tk), false)
			}
		}
		if ref.Kind == events.NodeTag {
			n := t.get(k)
			until := now.Add(p.TimeMachineWindow(ref.Repo))
			if l := t.tagLife(k); l != nil && l.InTimeMachine() {
				until = l.Until
			}
			if until.After(now) {
				im.RecoverableUntil = &until
			}
			n.setFlag(flagRetained, false) // what follows the end of the window
		}
		t.setPresent(k, t.get(k), false)
		im.Deleted = append(im.Deleted, ref)
		for {
			if err := t.flush(); err != nil {
				return err
			}
			var next [][]byte
			c := t.queue.Cursor()
			for qk, _ := c.First(); qk != nil; qk, _ = c.Next() {
				if nk := qk[8:]; !before[string(nk)] {
					next = append(next, append([]byte(nil), nk...))
				}
			}
			if len(next) == 0 {
				break
			}
			for _, nk := range next {
				before[string(nk)] = true
				nn := t.get(nk)
				r, err := parseNodeKey(nk)
				if err != nil {
					return err
				}
				im.Deleted = append(im.Deleted, r)
				if nk[0] == kBlob {
					im.Bytes += nn.size
				}
				t.setPresent(nk, nn, false)
			}
		}
		return errRollback
	})
	if errors.Is(err, errRollback) {
		err = nil
	}
	im.Nodes = len(im.Deleted)
	return im, err
}

// RepoUsage is what one repository holds.
type RepoUsage struct {
	Repo      string `json:"repo"`
	Tags      int    `json:"tags"`
	Manifests int    `json:"manifests"`
	Layers    int    `json:"layers"`
	// Bytes is the data the repository's layer links and revisions point
	// at; UniqueBytes the part of it no other repository links.
	Bytes       int64 `json:"bytes"`
	UniqueBytes int64 `json:"uniqueBytes"`
	// Reclaimable is the data of its nodes queued for collection.
	Reclaimable int64 `json:"reclaimableBytes"`
}

// Usage accounts storage by repository, largest first: what deleting a
// whole repository would free is its UniqueBytes.
func (p *Projection) Usage() ([]RepoUsage, error) {
	repos := map[string]*RepoUsage{}
	blobRepos := map[string]map[string]bool{} // blob key → repos linking it
	blobSize := map[string]int64{}
	get := func(r string) *RepoUsage {
		u := repos[r]
		if u == nil {
			u = &RepoUsage{Repo: r}
			repos[r] = u
		}
		return u
	}
	err := p.db.View(func(tx *bolt.Tx) error {
		return forEachNode(tx, func(k []byte, ref events.NodeRef, n *node) error {
			var bk []byte
			switch ref.Kind {
			case events.NodeBlob:
				blobSize[string(k)] = n.size
				return nil
			case events.NodeTag:
				if n.present() {
					get(ref.Repo).Tags++
				}
				return nil
			case events.NodeManifest:
				if !n.present() {
					return nil
				}
				u := get(ref.Repo)
				u.Manifests++
				if n.queuedAt != 0 {
					u.Reclaimable += n.size
				}
				bk = blobKey(ref.Digest)
			case events.NodeLayer:
				if !n.present() {
					return nil
				}
				u := get(ref.Repo)
				u.Layers++
				bk = blobKey(ref.Digest)
				if n.queuedAt != 0 { // blob keys ('b') sort before layers ('l'): its size is known
					u.Reclaimable += blobSize[string(bk)]
				}
			default:
				return nil
			}
			m := blobRepos[string(bk)]
			if m == nil {
				m = map[string]bool{}
				blobRepos[string(bk)] = m
			}
			m[ref.Repo] = true
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for bk, rs := range blobRepos {
		for r := range rs {
			u := repos[r]
			u.Bytes += blobSize[bk]
			if len(rs) == 1 {
				u.UniqueBytes += blobSize[bk]
			}
		}
	}
	out := make([]RepoUsage, 0, len(repos))
	for _, u := range repos {
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b RepoUsage) int {
		if a.Bytes != b.Bytes {
			return cmp.Compare(b.Bytes, a.Bytes)
		}
		return cmp.Compare(a.Repo, b.Repo)
	})
	return out, nil
}
