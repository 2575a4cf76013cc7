package partsim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Config describes the simulated registry. Zero fields take the defaults
// declared in Defaults.
type Config struct {
	// Objects is the target number of projection nodes (tags, manifest
	// revisions, layer links, blobs). The registry is grown repository by
	// repository until it holds about this many.
	Objects int64
	// Seed makes a run reproducible.
	Seed uint64
	// RepoZipfS is the exponent of the repositories' size distribution
	// (pushes per repository, P(k) ∝ k^-s), MaxRepoPushes its cap
	// (default: Objects/500, so the largest repository holds about 1.5 %
	// of the registry at any scale).
	RepoZipfS     float64
	MaxRepoPushes int
	// BaseImages is the number of base images (each in BaseVersions
	// versions, per architecture), chosen by popularity P(k) ∝ k^-BaseZipfS.
	BaseImages   int
	BaseVersions int
	BaseZipfS    float64
	// AppLayers is the mean number of a repository's own layers above its
	// base; ChangedLayers the mean number of them a push rebuilds.
	AppLayers     float64
	ChangedLayers float64
	// RebaseProb is the chance that a push moves to a newer base version.
	RebaseProb float64
	// PromoteProb is the chance that a push copies a recent image from
	// another repository (every blob mounted, the same manifest digest).
	PromoteProb float64
	// MultiArchRepos, SignedRepos and VersionTagRepos are the shares of
	// repositories that push an index of 2–4 platforms, sign every push
	// with an OCI referrer, and tag every push with a new version (else
	// they only move "latest").
	MultiArchRepos  float64
	SignedRepos     float64
	VersionTagRepos float64
	// Reservoir is how many recent images promotions choose from.
	Reservoir int
	// Partitions are the partition counts compared.
	Partitions []int
	// PlacedRepos is, per partition, how many of the largest repositories
	// the placed scheme assigns explicitly (the others are hashed).
	PlacedRepos int
	// PushesPerSecond is the registry-wide push rate used to turn event
	// counts into replay per hour.
	PushesPerSecond float64
	// SeqLen is the width of a stream sequence in a node record (5 bytes
	// up to 3.4·10¹⁰ events).
	SeqLen int
}

// Defaults are the parameters of the documented 10⁸-object run.
var Defaults = Config{
	Objects:         100_000_000,
	Seed:            1,
	RepoZipfS:       1.9,
	BaseImages:      400,
	BaseVersions:    16,
	BaseZipfS:       1.2,
	AppLayers:       5,
	ChangedLayers:   1.6,
	RebaseProb:      0.05,
	PromoteProb:     0.04,
	MultiArchRepos:  0.12,
	SignedRepos:     0.10,
	VersionTagRepos: 0.5,
	Reservoir:       8192,
	Partitions:      []int{8, 64, 256},
	PlacedRepos:     4,
	PushesPerSecond: 100,
	SeqLen:          5,
}

// ErrConfig is returned for a configuration that cannot be simulated.
var ErrConfig = errors.New("partsim: invalid configuration")

func (c *Config) defaults() error {
	d := Defaults
	set := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	if c.Objects == 0 {
		c.Objects = d.Objects
	}
	if c.Seed == 0 {
		c.Seed = d.Seed
	}
	set(&c.RepoZipfS, d.RepoZipfS)
	seti(&c.MaxRepoPushes, int(max(c.Objects/500, 10)))
	seti(&c.BaseImages, d.BaseImages)
	seti(&c.BaseVersions, d.BaseVersions)
	set(&c.BaseZipfS, d.BaseZipfS)
	set(&c.AppLayers, d.AppLayers)
	set(&c.ChangedLayers, d.ChangedLayers)
	set(&c.RebaseProb, d.RebaseProb)
	set(&c.PromoteProb, d.PromoteProb)
	set(&c.MultiArchRepos, d.MultiArchRepos)
	set(&c.SignedRepos, d.SignedRepos)
	set(&c.VersionTagRepos, d.VersionTagRepos)
	seti(&c.Reservoir, d.Reservoir)
	if len(c.Partitions) == 0 {
		c.Partitions = d.Partitions
	}
	seti(&c.PlacedRepos, d.PlacedRepos)
	set(&c.PushesPerSecond, d.PushesPerSecond)
	seti(&c.SeqLen, d.SeqLen)
	switch {
	case c.Objects < 100:
		return fmt.Errorf("%w: objects %d below 100", ErrConfig, c.Objects)
	case c.RepoZipfS <= 1 || c.BaseZipfS <= 1:
		return fmt.Errorf("%w: Zipf exponents must exceed 1", ErrConfig)
	case c.AppLayers < 1 || c.ChangedLayers < 1:
		return fmt.Errorf("%w: layer means must be at least 1", ErrConfig)
	}
	for _, p := range c.Partitions {
		if p < 1 || p > 65536 {
			return fmt.Errorf("%w: %d partitions", ErrConfig, p)
		}
	}
	return nil
}

// Blob identities. A blob is a unique build output (an id from a counter),
// one layer of a base image (an index into the pool), or the empty config
// every signature shares.
type blobRef uint64

const poolBit blobRef = 1 << 63

func (b blobRef) pool() (int, bool) { return int(b &^ poolBit), b&poolBit != 0 }

// hash is the blob's digest as a uniform 64-bit number: its leading bytes.
func (b blobRef) hash() uint64 { return splitmix(uint64(b) ^ 0x9e3779b97f4a7c15) }

type blob struct {
	ref  blobRef
	size int64
	// origin is the repository that created a unique blob.
	origin int32
	// sh follows a unique blob that promotions may mount elsewhere.
	sh *share
}

// share is what the accounting knows of a unique blob held in several
// partitions: per placement, the set of partitions holding it.
type share struct {
	masks []uint64
	// holders counts the in-edges the blob got after its first (which
	// came before the share did).
	holders int
}

// image is one single-platform image: its config, layers and manifest.
type image struct {
	config blob
	layers []blob
	digest blob // the manifest's own content
}

// arch is a platform's build state in a repository.
type arch struct {
	base, version int
	app           []blob
}

// manifest is a revision in a repository as the accounting sees it.
type manifest struct {
	digest    blob
	mediaType int
	size      int64
	blobs     []blob
	children  []*manifest
	subject   *manifest
	// count is the number of incoming edges (tags, an index, a subject).
	count  int32
	latest bool // "latest" pointed at it once
}

// link is a layer link in a repository.
type link struct {
	size  int64
	count int32
	sh    *share
}

// repo is one repository while it is generated.
type repo struct {
	index    int32
	name     string
	pushes   int
	archs    []arch
	signed   bool
	version  bool
	links    map[blobRef]*link
	promoted map[blobRef]*manifest
	revs     []*manifest
	tags     map[string]*manifest
	rng      *rand.Rand
}

// observer sees the registry as it is pushed.
type observer interface {
	startRepo(r *repo)
	// link: a new layer link in r, by a push (BlobPushed) or a mount.
	link(r *repo, b blob, fresh, mounted bool)
	// manifest: a revision pushed (ManifestPushed); fresh says its content
	// blob is new to the registry.
	manifest(r *repo, m *manifest, fresh bool)
	// tag: r's tag now points at m; first says the tag never pointed at
	// m before (a new history entry).
	tag(r *repo, name string, m *manifest, first bool)
	endPush(r *repo)
	endRepo(r *repo)
}

// repoTraits are drawn before generation, so that placement can see sizes.
type repoTraits struct {
	pushes int32
	archs  int8
}

func (t repoTraits) weight() int64 { return int64(t.pushes) * int64(t.archs) }

// generator streams a registry into an observer, repository by repository.
type generator struct {
	cfg      Config
	obs      observer
	nextID   uint64
	poolUsed []bool
	res      []*image
	resN     int
	rng      *rand.Rand
	base     *rand.Zipf
	// objects counts the nodes generated so far.
	objects int64
}

// poolSlots: per base image and version, 4 platforms of up to 8 layers.
const (
	poolArchs  = 4
	poolLayers = 8
)

func (g *generator) poolSize() int {
	return g.cfg.BaseImages*g.cfg.BaseVersions*poolArchs*poolLayers + 1
}

// emptyConfig is the one blob every signature shares.
func (g *generator) emptyConfig() blob {
	return blob{ref: poolBit | blobRef(g.poolSize()-1), size: 2}
}

func newGenerator(cfg Config, obs observer) *generator {
	g := &generator{cfg: cfg, obs: obs, rng: rand.New(rand.NewPCG(cfg.Seed, 7))}
	g.poolUsed = make([]bool, g.poolSize())
	g.res = make([]*image, cfg.Reservoir)
	g.base = rand.NewZipf(g.rng, cfg.BaseZipfS, 1, uint64(cfg.BaseImages-1))
	return g
}

// traits draws the size and shape of repository i.
func traits(cfg *Config, i int) repoTraits {
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)<<1))
	z := rand.NewZipf(rng, cfg.RepoZipfS, 1, uint64(cfg.MaxRepoPushes-1))
	t := repoTraits{pushes: int32(z.Uint64() + 1), archs: 1}
	if rng.Float64() < cfg.MultiArchRepos {
		t.archs = int8(2 + rng.IntN(3))
	}
	return t
}

func repoName(i int) string {
	return fmt.Sprintf("team-%d/service-%d", i/7, i)
}

func (g *generator) newBlob(r *repo, size int64) blob {
	g.nextID++
	return blob{ref: blobRef(g.nextID), size: size, origin: r.index}
}

// layerSize draws a compressed layer size: log-normal, median about 4 MB.
func layerSize(rng *rand.Rand, median float64) int64 {
	return int64(median*math.Exp(rng.NormFloat64()*1.5)) + 1
}

func geometric(rng *rand.Rand, mean float64) int {
	// 1 + Geometric with the given mean (≥ 1).
	if mean <= 1 {
		return 1
	}
	p := 1 / mean
	return 1 + int(math.Log(1-rng.Float64())/math.Log(1-p))
}

// baseLayers are the layers of platform p of a base image version.
func (g *generator) baseLayers(a arch, p int) []blob {
	n := 1 + a.base%5 // 1 to 5 layers
	out := make([]blob, n)
	for i := range out {
		idx := ((a.base*g.cfg.BaseVersions+a.version)*poolArchs+p%poolArchs)*poolLayers + i
		out[i] = blob{ref: poolBit | blobRef(idx), size: 8<<20 + int64(splitmix(uint64(idx))%(40<<20))}
	}
	return out
}

// run generates repositories with the given traits until they are done.
func (g *generator) run(ts []repoTraits) {
	for i, t := range ts {
		g.repo(i, t)
	}
}

func (g *generator) repo(i int, t repoTraits) {
	rng := rand.New(rand.NewPCG(g.cfg.Seed, uint64(i)<<1|1))
	r := &repo{index: int32(i), name: repoName(i), pushes: int(t.pushes), rng: rng,
		links: make(map[blobRef]*link), tags: make(map[string]*manifest)}
	r.signed = rng.Float64() < g.cfg.SignedRepos
	r.version = rng.Float64() < g.cfg.VersionTagRepos
	base := int(g.base.Uint64())
	for a := 0; a < int(t.archs); a++ {
		st := arch{base: base, version: rng.IntN(g.cfg.BaseVersions)}
		n := geometric(rng, g.cfg.AppLayers)
		for range n {
			st.app = append(st.app, g.newBlob(r, layerSize(rng, 4<<20)))
		}
		r.archs = append(r.archs, st)
	}
	g.obs.startRepo(r)
	for k := 0; k < r.pushes; k++ {
		g.push(r, k)
		g.obs.endPush(r)
	}
	g.obs.endRepo(r)
	g.objects += int64(len(r.revs) + len(r.links) + len(r.tags))
}

// linkBlob links b into r if it is not linked yet.
func (g *generator) linkBlob(r *repo, b blob, mounted bool) {
	if r.links[b.ref] != nil {
		return
	}
	r.links[b.ref] = &link{size: b.size, sh: b.sh}
	fresh := false
	if i, ok := b.ref.pool(); ok {
		fresh = !g.poolUsed[i]
		g.poolUsed[i] = true
	} else {
		fresh = b.origin == r.index && !mounted
	}
	if fresh {
		g.objects++
	}
	g.obs.link(r, b, fresh, mounted)
}

func (g *generator) pushManifest(r *repo, m *manifest, fresh bool) {
	for _, b := range m.blobs {
		r.links[b.ref].count++
	}
	for _, c := range m.children {
		c.count++
	}
	if m.subject != nil {
		m.count++ // the subject holds its referrer
	}
	r.revs = append(r.revs, m)
	if fresh {
		g.objects++
	}
	g.obs.manifest(r, m, fresh)
}

func (g *generator) setTag(r *repo, name string, m *manifest) {
	old := r.tags[name]
	if old != m {
		if old != nil {
			old.count--
		}
		r.tags[name] = m
		m.count++
	}
	// Version tags are new names at every push; only "latest" comes back
	// to a manifest it pointed at before (a promoted image tagged again).
	first := name != "latest" || !m.latest
	m.latest = m.latest || name == "latest"
	g.obs.tag(r, name, m, first)
}

func (g *generator) push(r *repo, k int) {
	rng := r.rng
	var top *manifest
	var img *image
	if g.resN > 0 && rng.Float64() < g.cfg.PromoteProb {
		img = g.res[rng.IntN(g.resN)]
	}
	switch {
	case img != nil && img.digest.origin != r.index && r.promoted[img.digest.ref] != nil:
		top = r.promoted[img.digest.ref] // promoted here before: only tagged again
	case img != nil && img.digest.origin != r.index:
		// A promotion: an image of another repository copied here, its
		// blobs mounted, its manifest digest the same.
		g.linkBlob(r, img.config, true)
		for _, l := range img.layers {
			g.linkBlob(r, l, true)
		}
		top = g.imageManifest(img)
		if r.promoted == nil {
			r.promoted = make(map[blobRef]*manifest)
		}
		r.promoted[img.digest.ref] = top
		g.pushManifest(r, top, false)
	default:
		var children []*manifest
		for a := range r.archs {
			st := &r.archs[a]
			if k > 0 && rng.Float64() < g.cfg.RebaseProb && st.version+1 < g.cfg.BaseVersions {
				st.version++
			}
			if k > 0 {
				n := min(geometric(rng, g.cfg.ChangedLayers), len(st.app))
				for i := len(st.app) - n; i < len(st.app); i++ {
					st.app[i] = g.newBlob(r, layerSize(rng, 4<<20))
				}
			}
			img := &image{config: g.newBlob(r, 1000+rng.Int64N(9000))}
			img.layers = append(g.baseLayers(*st, a), st.app...)
			for _, l := range img.layers {
				g.linkBlob(r, l, false)
			}
			g.linkBlob(r, img.config, false)
			img.digest = g.newBlob(r, 0)
			m := g.imageManifest(img)
			g.pushManifest(r, m, true)
			children = append(children, m)
			if len(r.archs) == 1 {
				g.remember(r, img)
			}
		}
		top = children[0]
		if len(children) > 1 {
			idx := &manifest{mediaType: len(mtIndex), children: children}
			idx.size = int64(120 + 180*len(children))
			idx.digest = g.newBlob(r, idx.size)
			g.pushManifest(r, idx, true)
			top = idx
		}
	}
	g.setTag(r, "latest", top)
	if r.version {
		g.setTag(r, "v1."+itoa(k), top)
	}
	if r.signed {
		sig := g.newBlob(r, 200+rng.Int64N(400))
		g.linkBlob(r, g.emptyConfig(), false)
		g.linkBlob(r, sig, false)
		m := &manifest{mediaType: len(mtManifest), blobs: []blob{g.emptyConfig(), sig}, subject: top}
		m.size = 600
		m.digest = g.newBlob(r, m.size)
		g.pushManifest(r, m, true)
	}
}

func (g *generator) imageManifest(img *image) *manifest {
	m := &manifest{mediaType: len(mtManifest), digest: img.digest}
	m.blobs = append(append(m.blobs, img.config), img.layers...)
	m.size = int64(250 + 170*len(m.blobs))
	m.digest.size = m.size
	return m
}

// remember keeps img among the recent images promotions choose from. Its
// unique blobs get the share state through which the accounting follows
// them into other partitions; a layer several images of r hold has one.
func (g *generator) remember(r *repo, img *image) {
	shared := func(b *blob) {
		if _, ok := b.ref.pool(); ok {
			return
		}
		l := r.links[b.ref]
		if l.sh == nil {
			l.sh = &share{}
		}
		b.sh = l.sh
	}
	shared(&img.config)
	for i := range img.layers {
		shared(&img.layers[i])
	}
	img.digest.sh = &share{}
	if g.resN < len(g.res) {
		g.res[g.resN] = img
		g.resN++
		return
	}
	g.res[g.rng.IntN(len(g.res))] = img
}

func itoa(k int) string {
	const digits = "0123456789"
	if k < 10 {
		return digits[k : k+1]
	}
	return fmt.Sprint(k)
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
