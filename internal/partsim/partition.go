package partsim

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// RepoPartition is the partition of a repository among n: a jump
// consistent hash (Lamping and Veach) of the FNV-1a hash of its name, so
// that growing n to n+1 moves only a 1/(n+1) share of the repositories.
func RepoPartition(repo string, n int) int { return jump(nameHash(repo), n) }

// DigestPartition is the partition of a digest among n, by range of its
// leading 32 bits (hash is the digest's first 8 bytes, big-endian): the
// digest partition q owns the storage prefixes blobs/sha256/<hex>/ of its
// range, so it can walk its own blobs alone.
func DigestPartition(hash uint64, n int) int {
	return int((hash >> 32) * uint64(n) >> 32)
}

func jump(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// place assigns repositories to n partitions. Hashed, every repository
// goes by RepoPartition; placed, the top n·top repositories by weight are
// assigned largest first to the least loaded partition (the others stay
// hashed): a placement table an operator would keep in a KV bucket.
func place(hashes []uint64, ts []repoTraits, n, top int, placed bool) []uint16 {
	part := make([]uint16, len(hashes))
	for i, h := range hashes {
		part[i] = uint16(jump(h, n))
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

func nameHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}
