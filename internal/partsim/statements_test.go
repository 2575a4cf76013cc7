package partsim

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

type stmt struct {
	from string
	v    uint64
	add  bool
}

// history is one repository stream's events about a few referrers of
// blobs, and the statements they cause on each channel.
type history struct {
	n        int
	alive    []map[string]bool // alive[s]: the live referrers after event s
	fwd, out []stmt            // in stream order
}

func newHistory(rng *rand.Rand, events, nodes int) *history {
	h := &history{n: events, alive: []map[string]bool{{}}}
	cur := map[string]bool{}
	for s := uint64(1); s <= uint64(events); s++ {
		x := fmt.Sprintf("l/repo/%d", rng.IntN(nodes))
		switch {
		case !cur[x] || rng.IntN(3) == 0:
			// A push, mount or manifest naming x: the forwarder states the
			// edge; a revival is also an outbox transition.
			h.fwd = append(h.fwd, stmt{x, s, true})
			if !cur[x] {
				h.out = append(h.out, stmt{x, s, true})
			}
			cur[x] = true
		default:
			// x dies (collected, its last holder gone): only the outbox knows.
			h.out = append(h.out, stmt{x, s, false})
			cur[x] = false
		}
		snap := make(map[string]bool, len(cur))
		for k, v := range cur {
			if v {
				snap[k] = true
			}
		}
		h.alive = append(h.alive, snap)
	}
	return h
}

// deliver interleaves prefixes of both channels (up to fwdUpTo and
// outUpTo, by stream position) at random, each message delivered one to
// three times, a duplicate possibly much later.
func deliver(rng *rand.Rand, t *edgeTable, h *history, fwdUpTo, outUpTo int) {
	var f, o []stmt
	for _, s := range h.fwd {
		if s.v <= uint64(fwdUpTo) {
			f = append(f, s)
		}
	}
	for _, s := range h.out {
		if s.v <= uint64(outUpTo) {
			o = append(o, s)
		}
	}
	var late []stmt
	apply := func(s stmt) {
		if s.add {
			t.link(s.from, s.v)
		} else {
			t.unlink(s.from, s.v)
		}
		for range rng.IntN(3) {
			late = append(late, s)
		}
	}
	for len(f)+len(o) > 0 {
		if len(o) == 0 || (len(f) > 0 && rng.IntN(2) == 0) {
			apply(f[0])
			f = f[1:]
		} else {
			apply(o[0])
			o = o[1:]
		}
		if len(late) > 0 && rng.IntN(4) == 0 {
			i := rng.IntN(len(late))
			s := late[i]
			late = append(late[:i], late[i+1:]...)
			if s.add {
				t.link(s.from, s.v)
			} else {
				t.unlink(s.from, s.v)
			}
		}
	}
	for _, s := range late {
		if s.add {
			t.link(s.from, s.v)
		} else {
			t.unlink(s.from, s.v)
		}
	}
}

// TestStatementsExactlyOnce checks the digest partition's rules for
// statements: whatever the duplicates and the interleaving of the
// forwarder's and the outbox's channels, the edges end as the repository
// partition's truth, and at any moment no edge is missing whose referrer
// is alive at the newest position either channel delivered (so a purge
// behind the forwarders' barrier never removes data a live node holds).
func TestStatementsExactlyOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for round := range 300 {
		h := newHistory(rng, 60, 6)
		whole := newEdgeTable()
		deliver(rng, whole, h, h.n, h.n)
		if got, want := len(whole.edges), len(h.alive[h.n]); got != want {
			t.Fatalf("round %d: %d edges after everything, want %d", round, got, want)
		}
		for x := range h.alive[h.n] {
			if _, ok := whole.edges[x]; !ok {
				t.Fatalf("round %d: live %s has no edge", round, x)
			}
		}

		lf, lo := rng.IntN(h.n+1), rng.IntN(h.n+1)
		part := newEdgeTable()
		deliver(rng, part, h, lf, lo)
		for x := range h.alive[max(lf, lo)] {
			if _, ok := part.edges[x]; !ok {
				t.Fatalf("round %d: %s is alive at %d (forwarder at %d, outbox at %d) but its edge is gone",
					round, x, max(lf, lo), lf, lo)
			}
		}
	}
}
