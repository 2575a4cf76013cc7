package partsim

import (
	"fmt"
	"slices"

	"github.com/refgc/refgc/refcount"
)

// Scheme names.
const (
	// SchemeRepo: every node of a repository in its repository's partition;
	// a blob is a node in every partition that references it, each counting
	// its own references.
	SchemeRepo = "repo"
	// SchemeRepoDigest: repository-scoped nodes by repository hash, blob
	// nodes in digest-range partitions fed by statements.
	SchemeRepoDigest = "repo+digest"
	// SchemePlaced: SchemeRepoDigest with the largest repositories placed
	// explicitly.
	SchemePlaced = "repo+digest, placed"
)

// Stats summarises one quantity over partitions.
type Stats struct {
	Min, Mean, Max float64
	Total          int64
	// MaxAt is the partition holding the maximum.
	MaxAt int
}

// Skew is max / mean.
func (s Stats) Skew() float64 {
	if s.Mean == 0 {
		return 0
	}
	return s.Max / s.Mean
}

func stats(v []int64) Stats {
	s := Stats{Min: float64(v[0])}
	for i, x := range v {
		s.Total += x
		if float64(x) > s.Max {
			s.Max, s.MaxAt = float64(x), i
		}
		s.Min = min(s.Min, float64(x))
	}
	s.Mean = float64(s.Total) / float64(len(v))
	return s
}

// Failure is what losing one partition costs.
type Failure struct {
	// Partition says which: the largest repository partition, or the
	// largest digest partition.
	Partition string
	// Stalled is the number of objects whose collection cannot proceed
	// until the partition is back.
	Stalled int64
	// ReplayPerHour is the events (statements, for a digest partition) the
	// partition receives per hour at Config.PushesPerSecond: what it
	// replays per hour since its last snapshot.
	ReplayPerHour float64
	// Rebuild is the objects a rebuild without its log re-reads (nodes to
	// walk in storage, or edges every repository partition restates).
	Rebuild int64
}

// SchemeResult is one scheme at one partition count.
type SchemeResult struct {
	Scheme string
	N      int
	// Repo: repository partitions (for SchemeRepo, with their blob
	// copies). Digest: digest partitions (zero for SchemeRepo). Machine:
	// repository partition i and digest partition i on one machine.
	RepoObjects, RepoBytes, RepoEvents Stats
	DigestObjects, DigestBytes         Stats
	DigestStatements, DigestWrites     Stats
	MachineObjects, MachineBytes       Stats
	// Per push: statements sent to digest partitions, edges they add,
	// distinct digest partitions they reach (mean and 99th percentile).
	StatementsPerPush, WritesPerPush float64
	DistinctPerPush                  float64
	DistinctP99                      int
	// OffMachine is the share of statements that leave their machine when
	// partition i of both kinds share one.
	OffMachine float64
	// PurgeAsks is how many other partitions a round of blob purges must
	// ask (SchemeRepo: all; otherwise none).
	PurgeAsks int
	// BlobCopies is the blob nodes kept per distinct blob.
	BlobCopies float64
	Failures   []Failure
}

// Result is one simulation run.
type Result struct {
	Config  Config
	Totals  Totals
	Schemes []SchemeResult
	// Bytes is the logical size of one projection of the whole registry,
	// as refcount lays it out today: keys, values and bbolt's leaf headers.
	Bytes int64
}

// Run simulates the registry of cfg and measures every scheme at every
// partition count.
func Run(cfg Config) (*Result, error) { return simulate(cfg, nil) }

// simulate is Run with another observer beside the accounting (tests turn
// the registry into events with it).
func simulate(cfg Config, also observer) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ts := sizeRegistry(&cfg)
	hashes := make([]uint64, len(ts))
	for i := range ts {
		hashes[i] = refcount.RepoHash(repoName(i))
	}
	var sides []*repoSide
	for _, n := range cfg.Partitions {
		for _, placed := range []bool{false, true} {
			sides = append(sides, &repoSide{n: n, placed: placed, part: place(hashes, ts, n, cfg.PlacedRepos, placed)})
		}
	}
	g := newGenerator(cfg, nil)
	a := newAccountant(&cfg, sides, g.poolSize())
	g.obs = a
	if also != nil {
		g.obs = tee{a, also}
	}
	g.run(ts)
	a.finish()
	if got := a.t.Objects(); got != g.objects {
		return nil, fmt.Errorf("partsim: accounting counted %d objects, the generator %d", got, g.objects)
	}
	res := &Result{Config: cfg, Totals: a.t}
	res.Bytes = stats(sides[0].bytes).Total + stats(sides[0].digest.bytes).Total - a.t.EdgeWrites*versionLen
	for _, s := range sides {
		if !s.placed {
			res.Schemes = append(res.Schemes, a.scheme(s, SchemeRepo))
			res.Schemes = append(res.Schemes, a.scheme(s, SchemeRepoDigest))
		} else {
			res.Schemes = append(res.Schemes, a.scheme(s, SchemePlaced))
		}
	}
	return res, nil
}

// sizeRegistry draws repositories until they hold cfg.Objects nodes: a
// first generation, without accounting, finds how many it takes (the
// registry is a function of the seed, so the measured run generates the
// same one). Placement needs every repository's size before the run.
func sizeRegistry(cfg *Config) []repoTraits {
	g := newGenerator(*cfg, nullObserver{})
	var ts []repoTraits
	for i := 0; g.objects < cfg.Objects; i++ {
		t := traits(cfg, i)
		ts = append(ts, t)
		g.repo(i, t)
	}
	return ts
}

type tee [2]observer

func (t tee) startRepo(r *repo) { t[0].startRepo(r); t[1].startRepo(r) }
func (t tee) link(r *repo, b blob, fresh, mounted bool) {
	t[0].link(r, b, fresh, mounted)
	t[1].link(r, b, fresh, mounted)
}
func (t tee) manifest(r *repo, m *manifest, fresh bool) {
	t[0].manifest(r, m, fresh)
	t[1].manifest(r, m, fresh)
}
func (t tee) tag(r *repo, name string, m *manifest, first bool) {
	t[0].tag(r, name, m, first)
	t[1].tag(r, name, m, first)
}
func (t tee) endPush(r *repo) { t[0].endPush(r); t[1].endPush(r) }
func (t tee) endRepo(r *repo) { t[0].endRepo(r); t[1].endRepo(r) }

type nullObserver struct{}

func (nullObserver) startRepo(*repo)                    {}
func (nullObserver) link(*repo, blob, bool, bool)       {}
func (nullObserver) manifest(*repo, *manifest, bool)    {}
func (nullObserver) tag(*repo, string, *manifest, bool) {}
func (nullObserver) endPush(*repo)                      {}
func (nullObserver) endRepo(*repo)                      {}

func (a *accountant) scheme(s *repoSide, name string) SchemeResult {
	d := s.digest
	perHour := a.cfg.PushesPerSecond * 3600 / float64(a.t.Pushes)
	r := SchemeResult{Scheme: name, N: s.n}
	r.StatementsPerPush = float64(a.t.Statements) / float64(a.t.Pushes)
	r.WritesPerPush = float64(a.t.EdgeWrites) / float64(a.t.Pushes)
	var sum, seen int64
	for k, c := range d.perPush {
		sum += int64(k) * c
	}
	r.DistinctPerPush = float64(sum) / float64(a.t.Pushes)
	for k, c := range d.perPush {
		seen += c
		if float64(seen) >= 0.99*float64(a.t.Pushes) {
			r.DistinctP99 = k
			break
		}
	}
	r.RepoEvents = stats(s.events)
	held := stats(s.held)
	r.BlobCopies = float64(held.Total) / float64(a.t.Blobs)
	if name == SchemeRepo {
		objs, bytes := slices.Clone(s.objs), slices.Clone(s.bytes)
		for p := range objs {
			objs[p] += s.held[p]
			bytes[p] += s.copyBytes[p]
		}
		r.RepoObjects, r.RepoBytes = stats(objs), stats(bytes)
		r.MachineObjects, r.MachineBytes = r.RepoObjects, r.RepoBytes
		r.StatementsPerPush, r.WritesPerPush, r.DistinctPerPush, r.DistinctP99 = 0, 0, 0, 0
		r.PurgeAsks = s.n - 1
		worst := r.RepoObjects.MaxAt
		r.Failures = []Failure{{
			Partition: "largest partition",
			// Its own nodes, and every blob purge in the registry: a purge
			// needs every partition to say it holds no reference.
			Stalled:       s.objs[worst] + a.t.Blobs,
			ReplayPerHour: float64(s.events[worst]) * perHour,
			Rebuild:       objs[worst],
		}}
		return r
	}
	r.RepoObjects, r.RepoBytes = stats(s.objs), stats(s.bytes)
	r.DigestObjects, r.DigestBytes = stats(d.objs), stats(d.bytes)
	r.DigestStatements, r.DigestWrites = stats(d.stmts), stats(d.writes)
	mo, mb := make([]int64, s.n), make([]int64, s.n)
	for p := range mo {
		mo[p] = s.objs[p] + d.objs[p]
		mb[p] = s.bytes[p] + d.bytes[p]
	}
	r.MachineObjects, r.MachineBytes = stats(mo), stats(mb)
	r.OffMachine = 1 - float64(s.local)/float64(a.t.Statements)
	rw, dw := r.RepoObjects.MaxAt, r.DigestObjects.MaxAt
	r.Failures = []Failure{{
		Partition: "largest repository partition",
		// Its own nodes, and the blobs only it references: their counts
		// cannot fall while it is away. Every other purge goes on.
		Stalled:       s.objs[rw] + s.excl[rw],
		ReplayPerHour: float64(s.events[rw]) * perHour,
		Rebuild:       s.objs[rw],
	}, {
		Partition: "largest digest partition",
		// Its blobs' purges; repository partitions go on unlinking, their
		// statements wait in its stream.
		Stalled:       d.objs[dw],
		ReplayPerHour: float64(d.stmts[dw]) * perHour,
		Rebuild:       d.objs[dw] + d.writes[dw],
	}}
	return r
}
