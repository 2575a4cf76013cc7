package partsim

// edgeTable is the reference model of how a digest partition applies
// statements (docs/PARTITIONING.md, "Cross-partition references"): the
// in-edges of its blobs, keyed by the referrer's node key, each with the
// version (the repository stream's sequence) of the statement that wrote
// it, and the tombstones of removed edges. Adds arrive from the forwarder,
// removals (and the adds of revivals) from the repository partition's
// outbox: two channels, each delivered at least once and in order, in any
// interleaving. The rules make the result independent of duplicates and of
// that interleaving, and never drop an edge that is alive at the newest
// position either channel has delivered.
type edgeTable struct {
	edges map[string]uint64
	tombs map[string]uint64
	// writes counts the changes the rules make (a bbolt put or delete).
	writes int
}

func newEdgeTable() *edgeTable {
	return &edgeTable{edges: map[string]uint64{}, tombs: map[string]uint64{}}
}

// link applies link{from, version v}: ignored when a tombstone is at least
// as new; an existing edge takes the newer version; otherwise the edge is
// added (and the blob's count follows).
func (t *edgeTable) link(from string, v uint64) {
	if tomb, ok := t.tombs[from]; ok && tomb >= v {
		return
	}
	if e, ok := t.edges[from]; ok {
		if v > e {
			t.edges[from] = v
			t.writes++
		}
		return
	}
	t.edges[from] = v
	t.writes++
}

// unlink applies unlink{from, version v}: the edge goes if it is older
// than v, and a tombstone at v keeps older adds, reordered after it, out.
func (t *edgeTable) unlink(from string, v uint64) {
	if e, ok := t.edges[from]; ok && e < v {
		delete(t.edges, from)
		t.writes++
	}
	if t.tombs[from] < v {
		t.tombs[from] = v
		t.writes++
	}
}
