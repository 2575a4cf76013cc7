package quay_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/examples/quay"
)

var (
	quayOps  = flag.Int("quay.ops", 300, "operations of TestQuayRandomized (10000 for the long run)")
	quaySeed = flag.Uint64("quay.seed", 0, "seed of TestQuayRandomized (0: a new one, logged)")
)

// TestQuayRandomized drives the publisher with random pushes, tag moves
// and deletes, expiring tags, restores from the time machine, repository
// purges, label changes, legacy image chains and derived storage, while
// its events arrive late, reordered and twice and the clock moves on
// between passes; every pass is checked against the oracle (nothing live
// goes), and every drain (exactly the garbage goes).
func TestQuayRandomized(t *testing.T) {
	seed := *quaySeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -quay.seed=%d), %d operations", seed, seed, *quayOps)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	faults := &faultPublisher{rng: rand.New(rand.NewPCG(seed+1, seed)), hold: 0.15, dup: 0.1, flush: 0.2}
	h := newHarness(t, faults)
	g := &generator{t: t, h: h, rng: rng, ctx: context.Background(), ops: map[string]int{}}
	drains, busy := 0, 0
	for i := range *quayOps {
		g.step(i)
		if rng.IntN(25) == 0 {
			busy += h.drain()
			drains++
		}
	}
	busy += h.drain()
	drains++
	o := h.oracle()
	t.Logf("operations %v; %d drains, %d passes that removed something; faults: %d batches held, %d sent twice, %d replayed, %d released out of order; owner answers %v; rows left %d",
		g.ops, drains, busy, faults.n.held, faults.n.dups, faults.n.replays, faults.n.reordered, h.owner.n, len(o.rows()))
}

type generator struct {
	t   *testing.T
	h   *harness
	rng *rand.Rand
	ctx context.Context
	n   int
	ops map[string]int
}

var (
	repos = []string{"app", "team/web", "lib"}
	tags  = []string{"latest", "v1", "v2", "stable"}
)

// pick returns a random row's columns from a query, or false if it found none.
func (g *generator) pick(q string, args []any, dest ...any) bool {
	g.t.Helper()
	err := g.h.reg.DB().QueryRow(q+" ORDER BY RANDOM() LIMIT 1", args...).Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return false
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return true
}

func (g *generator) must(err error) {
	g.t.Helper()
	if err != nil {
		g.t.Fatal(err)
	}
}

func (g *generator) blob(repo string) digest.Digest {
	g.n++
	d, err := g.h.reg.PushBlob(g.ctx, repo, fmt.Appendf(nil, "blob-%d-%d", g.n, g.rng.Uint32()))
	g.must(err)
	return d
}

func (g *generator) step(i int) {
	repo := repos[g.rng.IntN(len(repos))]
	reg := g.h.reg
	var d digest.Digest
	var s string
	switch r := g.rng.IntN(100); {
	case r < 10:
		g.ops["blob"]++
		g.blob(repo)
	case r < 12:
		g.ops["time"]++
		g.h.advance(time.Duration(g.rng.Int64N(int64(3 * time.Hour))))
		g.h.pass()
	case r < 33:
		g.ops["manifest"]++
		spec := quay.ManifestSpec{Repo: repo, Nonce: fmt.Sprint(i)}
		for range 1 + g.rng.IntN(3) {
			if g.rng.IntN(3) > 0 && g.pick(`SELECT digest FROM blob`, nil, &d) {
				spec.Blobs = append(spec.Blobs, d)
			} else {
				spec.Blobs = append(spec.Blobs, g.blob(repo))
			}
		}
		if g.rng.IntN(10) < 7 {
			spec.Tag, spec.Expires = tags[g.rng.IntN(len(tags))], g.expiry()
		}
		for range g.rng.IntN(3) {
			spec.Labels = append(spec.Labels, fmt.Sprintf("k%d=v%d", g.rng.IntN(5), i))
		}
		if g.rng.IntN(10) < 4 {
			if g.rng.IntN(2) == 0 || !g.pick(`SELECT docker_image_id FROM image WHERE repo = ?`, []any{repo}, &s) {
				s = g.chain(repo, 1+g.rng.IntN(4))
			}
			spec.Legacy = s
		}
		_, err := reg.PushManifest(g.ctx, spec)
		g.must(err)
	case r < 47:
		if g.pick(`SELECT digest FROM manifest WHERE repo = ?`, []any{repo}, &d) {
			g.ops["tag"]++
			g.must(reg.SetTag(g.ctx, repo, tags[g.rng.IntN(len(tags))], d, g.expiry()))
		}
	case r < 54:
		if g.pick(`SELECT name FROM tag WHERE repo = ? AND (lifetime_end IS NULL OR lifetime_end > ?)`, []any{repo, g.h.now().UnixMilli()}, &s) {
			g.ops["untag"]++
			if err := reg.DeleteTag(g.ctx, repo, s); !errors.Is(err, quay.ErrNotFound) { // expired the same millisecond
				g.must(err)
			}
		}
	case r < 57:
		g.restore(repo)
	case r < 58:
		if g.rng.IntN(4) == 0 {
			g.ops["purge"]++
			g.must(reg.PurgeRepository(g.ctx, repo))
		}
	case r < 65:
		if g.pick(`SELECT digest FROM manifest WHERE repo = ?`, []any{repo}, &d) {
			g.ops["label"]++
			_, err := reg.AttachLabel(g.ctx, repo, d, fmt.Sprintf("x=%d", i))
			g.must(err)
		}
	case r < 70:
		if g.pick(`SELECT m.digest, l.uuid FROM manifest m, label l WHERE m.repo = ? AND l.repo = m.repo
			AND NOT EXISTS (SELECT 1 FROM manifest_label ml WHERE ml.manifest_id = m.id AND ml.label_id = l.id)`, []any{repo}, &d, &s) {
			g.ops["share-label"]++
			g.must(reg.ShareLabel(g.ctx, repo, d, s))
		}
	case r < 80:
		if g.pick(`SELECT m.digest, l.uuid FROM manifest_label ml JOIN manifest m ON m.id = ml.manifest_id
			JOIN label l ON l.id = ml.label_id WHERE m.repo = ?`, []any{repo}, &d, &s) {
			g.ops["unlabel"]++
			g.must(reg.DetachLabel(g.ctx, repo, d, s))
		}
	case r < 92:
		g.ops["legacy"]++
		parent := ""
		if g.rng.IntN(2) == 0 {
			g.pick(`SELECT docker_image_id FROM image WHERE repo = ?`, []any{repo}, &parent)
		}
		g.image(repo, parent)
	default:
		if g.pick(`SELECT docker_image_id FROM image WHERE repo = ?`, []any{repo}, &s) {
			g.ops["derived"]++
			g.n++
			_, err := reg.AddDerivedStorage(g.ctx, repo, s, fmt.Sprintf("t%d", g.n), fmt.Appendf(nil, "derived-%d", g.n))
			g.must(err)
		}
	}
}

// image creates a legacy image with a new storage blob, and returns its id.
func (g *generator) image(repo, parent string) string {
	g.n++
	id := fmt.Sprintf("img%d", g.n)
	g.must(g.h.reg.CreateLegacyImage(g.ctx, repo, id, parent, g.blob(repo)))
	return id
}

// chain creates a chain of n legacy images and returns the last one.
func (g *generator) chain(repo string, n int) string {
	id := ""
	for range n {
		id = g.image(repo, id)
	}
	return id
}

// expiry is a tag's expiry: none mostly, else up to five hours ahead.
func (g *generator) expiry() time.Time {
	if g.rng.IntN(4) > 0 {
		return time.Time{}
	}
	return g.h.now().Add(time.Duration(1 + g.rng.Int64N(int64(5*time.Hour))))
}

// restore brings back, through refgc, a tag of repo that the registry
// keeps in its time machine, once refgc has every event about it.
func (g *generator) restore(repo string) {
	var name string
	since := g.h.now().Add(-g.h.proj.TimeMachineWindow(repo)).UnixMilli()
	if !g.pick(`SELECT t.name FROM tag t WHERE t.repo = ? AND t.lifetime_end > ? AND t.lifetime_end <= ?
		AND NOT EXISTS (SELECT 1 FROM tag c WHERE c.repo = t.repo AND c.name = t.name AND (c.lifetime_end IS NULL OR c.lifetime_end > ?))`,
		[]any{repo, since, g.h.now().UnixMilli(), g.h.now().UnixMilli()}, &name) {
		return
	}
	g.ops["restore"]++
	g.must(g.h.faults.release(g.ctx, true))
	if _, err := g.h.col.RestoreTag(g.ctx, repo, name); err != nil {
		g.t.Fatalf("restore %s:%s from the time machine: %v%s", repo, name, err, g.h.explainTag(repo, name))
	}
	if !g.pick(`SELECT name FROM tag WHERE repo = ? AND name = ? AND lifetime_end IS NULL`, []any{repo, name}, &name) {
		g.t.Fatalf("restore %s:%s: the registry's tag is not current", repo, name)
	}
}
