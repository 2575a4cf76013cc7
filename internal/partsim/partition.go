package partsim

import (
	"cmp"
	"slices"

	"github.com/refgc/refgc/refcount"
)

// DigestPartition is the partition of a digest among n, by range of its
// leading 32 bits (hash is the digest's first 8 bytes, big-endian): the
// digest partition q owns the storage prefixes blobs/sha256/<hex>/ of its
// range, so it can walk its own blobs alone (refcount.DigestRange).
func DigestPartition(hash uint64, n int) int { return refcount.DigestRange(uint32(hash>>32), n) }

// place assigns repositories to n partitions. Hashed, every repository
// goes by RepoPartition; placed, the top n·top repositories by weight are
// assigned largest first to the least loaded partition (the others stay
// hashed): a placement table an operator would keep in a KV bucket.
func place(hashes []uint64, ts []repoTraits, n, top int, placed bool) []uint16 {
	part := make([]uint16, len(hashes))
	for i, h := range hashes {
		part[i] = uint16(refcount.JumpHash(h, n))
	}
	if !placed {
		return part
	}
	k := min(top*n, len(ts))
	order := make([]int, len(ts))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(ts[b].weight(), ts[a].weight()) })
	load := make([]int64, n)
	for _, i := range order[k:] {
		load[part[i]] += ts[i].weight()
	}
	for _, i := range order[:k] {
		best := 0
		for p := range load {
			if load[p] < load[best] {
				best = p
			}
		}
		part[i] = uint16(best)
		load[best] += ts[i].weight()
	}
	return part
}
