package refcount

// ForEach calls fn for every node the projection holds, in key order, in
// one read transaction: what Dump writes, as values. An error from fn stops
// the iteration and is returned as is. fn must not write to the projection
// (it would wait for the read transaction to end).
func (p *Projection) ForEach(fn func(NodeInfo) error) error {
	return p.forEachInfo(fn)
}
