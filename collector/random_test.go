package collector_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// opsFlag sets the number of operations of the randomized tests (0: each
// test's default). The long form is -collector.ops=100000.
var opsFlag = flag.Int("collector.ops", 0, "operations of the randomized collector tests (0: default)")

// noFaultsFlag turns off the delivery faults of the randomized tests.
var noFaultsFlag = flag.Bool("collector.nofaults", false, "deliver every event of the randomized tests once, in order")

// seedFlag fixes the seed of the randomized tests (0: a new one, logged).
var seedFlag = flag.Uint64("collector.seed", 0, "seed of the randomized collector tests (0: random)")

func seed(t *testing.T) uint64 {
	s := *seedFlag
	if s == 0 {
		s = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -collector.seed=%d)", s, s)
	return s
}

const (
	mtImage = "application/vnd.oci.image.manifest.v1+json"
	mtIndex = "application/vnd.oci.image.index.v1+json"
	mtLayer = "application/vnd.oci.image.layer.v1.tar"
	mtConf  = "application/vnd.oci.image.config.v1+json"
)

// world is registry storage written directly in Distribution's layout,
// with the events the registry would have sent applied through a
// DirectLog, and a collector over both on a clock the test moves.
type world struct {
	t     testing.TB
	root  string
	store *store.Driver
	proj  *refcount.Projection
	log   *collector.DirectLog
	col   *collector.Collector
	rec   *reconcile.Reconciler
	clock time.Time
	seq   int
	// net, when set, delivers the events through two registry instances
	// with delivery faults.
	net *delivery
	// mirror, when set, receives every delivered event too: a standby's
	// projection.
	mirror *collector.DirectLog
	// keep is the untagged policy keep: every revision is a root.
	keep bool
	// stamp, when set, marks each event as a registry instance sends it.
	stamp func(*events.Event)
	// mute loses every event emitted while it is set.
	mute bool
}

// delivery models the notification queues of two registry instances on
// one host pair: each event goes through one of them. A queue may stall
// (its events arrive late, in order, after the other queue's newer ones:
// late and reordered), deliver an event twice, or lose its content with
// a restart of its instance (a new instance id on the same host, which
// pauses collection until a reconcile).
type delivery struct {
	r        *rand.Rand
	queues   [2][]events.Event
	stalled  [2]int // operations left until a stalled queue moves again
	instance [2]int
	counts   map[string]int
}

func (d *delivery) source(q int) string {
	return fmt.Sprintf("distribution:reg%d-%d", q, d.instance[q])
}

func newWorld(t testing.TB, concurrency int) *world { return newWorldSync(t, concurrency, false) }

// newWorldSync is newWorld with the projection's fsyncs on or off.
func newWorldSync(t testing.TB, concurrency int, sync bool) *world {
	t.Helper()
	return newWorldPolicy(t, concurrency, sync, refcount.PolicyDelete)
}

// newWorldPolicy is newWorldSync with an untagged policy.
func newWorldPolicy(t testing.TB, concurrency int, sync bool, policy refcount.Policy) *world {
	t.Helper()
	w := &world{t: t, root: t.TempDir(), clock: time.Now().UTC().Truncate(time.Second), keep: policy == refcount.PolicyKeep}
	var err error
	w.proj, err = refcount.Open(filepath.Join(t.TempDir(), "refs.db"),
		refcount.Options{Untagged: policy, Grace: testGrace, Retention: testRetention, NoSync: !sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.proj.Close() })
	w.store, err = store.New(context.Background(), "filesystem", map[string]any{"rootdirectory": w.root})
	if err != nil {
		t.Fatal(err)
	}
	w.log = &collector.DirectLog{P: w.proj}
	now := func() time.Time { return w.clock }
	w.rec, err = reconcile.New(reconcile.Config{Projection: w.proj, Store: w.store, Log: w.log, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	w.col, err = collector.New(collector.Config{Projection: w.proj, Storage: w.store, Log: w.log,
		Now: now, Concurrency: concurrency, Reconcile: func(ctx context.Context, repos []string) error {
			_, err := w.rec.ReconcileRepos(ctx, repos)
			return err
		}})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// emit applies events as the registry's notifications would arrive.
func (w *world) emit(evs ...events.Event) {
	w.t.Helper()
	for i := range evs {
		w.seq++
		evs[i].V, evs[i].ID, evs[i].Time, evs[i].Source = events.Version, fmt.Sprintf("ev-%d", w.seq), w.clock, "test"
		if w.stamp != nil {
			w.stamp(&evs[i])
		}
	}
	if w.mute {
		return
	}
	if w.net == nil {
		w.deliver(evs)
		return
	}
	d := w.net
	for _, e := range evs {
		q := d.r.IntN(2)
		e.Source, e.Host = d.source(q), fmt.Sprintf("reg%d:5000", q)
		switch roll := d.r.IntN(1000); {
		case roll < 3: // the instance restarts: what its queue held is lost
			d.counts["lost"] += len(d.queues[q]) + 1
			d.queues[q] = nil
			d.instance[q]++
			d.counts["restart"]++
			continue
		case roll < 20:
			d.queues[q] = append(d.queues[q], e)
			d.counts["duplicated"]++
		case roll < 60 && d.stalled[q] == 0:
			d.stalled[q] = 1 + d.r.IntN(30)
			d.counts["stall"]++
		}
		d.queues[q] = append(d.queues[q], e)
	}
	w.flush(false)
}

// flush delivers what the queues that are not stalled hold (all of them
// when all is set), counting a stalled queue one operation nearer moving.
func (w *world) flush(all bool) {
	d := w.net
	for q := range d.queues {
		if d.stalled[q] > 0 && !all {
			d.stalled[q]--
			if len(d.queues[q]) > 0 {
				d.counts["late"] += len(d.queues[q])
			}
			continue
		}
		d.stalled[q] = 0
		evs := d.queues[q]
		d.queues[q] = nil
		w.deliver(evs)
	}
}

// deliver hands events to the log as the webhook would, stamped with the
// time they are received.
func (w *world) deliver(evs []events.Event) {
	w.t.Helper()
	if len(evs) == 0 {
		return
	}
	if w.net != nil {
		for i := range evs {
			evs[i].Received = w.clock
		}
	}
	if err := w.log.Publish(context.Background(), evs); err != nil {
		w.t.Fatal(err)
	}
	if w.mirror != nil {
		w.must(w.mirror.Publish(context.Background(), evs))
	}
}

func (w *world) blobPath(d digest.Digest) string {
	return filepath.Join(w.root, "docker", "registry", "v2", "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")
}

// writeBlob writes blob data as the registry's blob store would.
func (w *world) writeBlob(b []byte) events.Descriptor {
	w.t.Helper()
	sum := sha256.Sum256(b)
	d := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(sum[:]))
	p := w.blobPath(d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		w.t.Fatal(err)
	}
	return events.Descriptor{Digest: d, Size: int64(len(b))}
}

func (w *world) hasBlob(d digest.Digest) bool {
	_, err := os.Stat(w.blobPath(d))
	return err == nil
}

func (w *world) hasRevision(repo string, d digest.Digest) bool {
	_, err := os.Stat(filepath.Join(w.repoDir(repo), "_manifests", "revisions", "sha256", d.Encoded(), "link"))
	return err == nil
}

func (w *world) repoDir(repo string) string {
	return filepath.Join(w.root, "docker", "registry", "v2", "repositories", filepath.FromSlash(repo))
}

// writeLink writes a link file as the registry does (the digest, no
// newline), without the fsync of Distribution's driver, to go fast. Its
// modification time is the world's clock, the clock of the events: the
// storage check compares the two.
func (w *world) writeLink(d digest.Digest, elem ...string) {
	w.t.Helper()
	p := filepath.Join(elem...)
	w.must(os.MkdirAll(filepath.Dir(p), 0o755))
	w.must(os.WriteFile(p, []byte(d.String()), 0o644))
	w.must(os.Chtimes(p, w.clock, w.clock))
}

func (w *world) linkLayer(repo string, d digest.Digest) {
	w.writeLink(d, w.repoDir(repo), "_layers", "sha256", d.Encoded(), "link")
}

func (w *world) linkRevision(repo string, d digest.Digest) {
	w.writeLink(d, w.repoDir(repo), "_manifests", "revisions", "sha256", d.Encoded(), "link")
}

func (w *world) linkTag(repo, tag string, d digest.Digest) {
	w.writeLink(d, w.repoDir(repo), "_manifests", "tags", tag, "index", "sha256", d.Encoded(), "link")
	w.writeLink(d, w.repoDir(repo), "_manifests", "tags", tag, "current", "link")
}

func (w *world) must(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
}

// pushBlob uploads new random data into repo (BlobPushed).
func (w *world) pushBlob(r *rand.Rand, repo, mediaType string, size int) events.Descriptor {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	desc := w.writeBlob(b)
	desc.MediaType = mediaType
	w.linkLayer(repo, desc.Digest)
	w.emit(events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: desc.Digest, Size: desc.Size}})
	return desc
}

// mountBlob links existing data into repo (BlobMounted).
func (w *world) mountBlob(repo, from string, desc events.Descriptor) {
	w.linkLayer(repo, desc.Digest)
	w.emit(events.Event{Kind: events.BlobMounted, Blob: &events.Blob{Repo: repo, Digest: desc.Digest, Size: desc.Size, From: from}})
}

type descJSON struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

func dj(d events.Descriptor) descJSON { return descJSON{d.MediaType, d.Digest, d.Size} }

// putManifest writes a manifest (image or index) with its revision link
// and, if tag is set, the tag; blobs must already be linked in repo.
func (w *world) putManifest(repo, tag string, blobs, children []events.Descriptor, subject *events.Descriptor) events.Descriptor {
	w.t.Helper()
	body := map[string]any{"schemaVersion": 2}
	mt := mtImage
	if children != nil {
		mt = mtIndex
		ms := []descJSON{}
		for _, c := range children {
			ms = append(ms, dj(c))
		}
		body["manifests"] = ms
	} else {
		body["config"] = dj(blobs[0])
		ls := []descJSON{}
		for _, l := range blobs[1:] {
			ls = append(ls, dj(l))
		}
		body["layers"] = ls
	}
	body["mediaType"] = mt
	if subject != nil {
		body["subject"] = dj(*subject)
	}
	raw, err := json.Marshal(body)
	w.must(err)
	desc := w.writeBlob(raw)
	desc.MediaType = mt
	w.linkRevision(repo, desc.Digest)
	if tag != "" {
		w.linkTag(repo, tag, desc.Digest)
	}
	m := &events.Manifest{Repo: repo, Digest: desc.Digest, MediaType: mt, Size: desc.Size,
		Blobs: blobs, Children: children, Subject: subject, Tag: tag}
	w.emit(events.Event{Kind: events.ManifestPushed, Manifest: m})
	return desc
}

// pass runs one collector pass and checks that everything reachable
// before it is still on disk after it.
func (w *world) pass() collector.Report {
	w.t.Helper()
	before, err := regtest.Reachable(w.root, w.keep)
	w.must(err)
	rep, err := w.col.Pass(context.Background())
	w.must(err)
	if rep.Errors > 0 {
		w.t.Fatalf("pass had %d errors", rep.Errors)
	}
	after, err := regtest.Present(w.root)
	w.must(err)
	if lost := before.Minus(after); len(lost) > 0 {
		w.t.Fatalf("reachable objects deleted by a pass: %v", lost)
	}
	return rep
}

// finish drains with every lease and retention long past and checks that
// exactly the reachable objects remain.
func (w *world) finish() collector.Report {
	w.t.Helper()
	before, err := regtest.Reachable(w.root, w.keep)
	w.must(err)
	var total collector.Report
	for range 6 {
		w.clock = w.clock.Add(testRetention + testGrace)
		rep := w.pass()
		total.Unlinked += rep.Unlinked
		total.Purged += rep.Purged
	}
	after, err := regtest.Present(w.root)
	w.must(err)
	if lost := before.Minus(after); len(lost) > 0 {
		w.t.Errorf("reachable objects deleted: %v", lost)
	}
	if left := after.Minus(before); len(left) > 0 {
		w.t.Errorf("garbage left behind: %v", left)
	}
	if ms, err := w.proj.Check(); err != nil || len(ms) > 0 {
		w.t.Errorf("projection check: %v %v", ms, err)
	}
	if ins, err := w.proj.Intents(); err != nil || len(ins) > 0 {
		w.t.Errorf("intents left: %v %v", ins, err)
	}
	return total
}

// pushed is a manifest the test pushed, as the test remembers it.
type pushed struct {
	repo     string
	desc     events.Descriptor
	blobs    []events.Descriptor
	children []digest.Digest
	index    bool
}

// TestRandomDirect drives the projection and the collector with random
// registry activity written straight into storage, the events built by
// hand, and checks each pass against the on-disk reachability oracle.
// Under --untagged keep every revision is a root: the oracle keeps them
// all, and the run is a quarter as long.
func TestRandomDirect(t *testing.T) {
	ops := 10000
	if testing.Short() {
		ops /= 10
	}
	if *opsFlag > 0 {
		ops = *opsFlag
	}
	for _, policy := range []refcount.Policy{refcount.PolicyDelete, refcount.PolicyKeep} {
		t.Run(string(policy), func(t *testing.T) {
			if policy == refcount.PolicyKeep {
				randomDirect(t, policy, ops/4)
			} else {
				randomDirect(t, policy, ops)
			}
		})
	}
}

func randomDirect(t *testing.T, policy refcount.Policy, ops int) {
	r := rand.New(rand.NewPCG(seed(t), 7))
	w := newWorldPolicy(t, 4, false, policy)
	counts := map[string]int{}
	if !*noFaultsFlag {
		w.net = &delivery{r: rand.New(rand.NewPCG(r.Uint64(), 8)), counts: counts}
	}
	repos := []string{"a", "b", "c", "d/e"}
	tags := []string{"v1", "v2", "v3", "latest"}
	var ms []*pushed
	start := time.Now()

	livePick := func(repo string, indexOK bool) *pushed {
		for range 8 {
			if len(ms) == 0 {
				return nil
			}
			m := ms[r.IntN(len(ms))]
			if (repo == "" || m.repo == repo) && (indexOK || !m.index) && w.hasRevision(m.repo, m.desc.Digest) {
				return m
			}
		}
		return nil
	}
	isChild := func(m *pushed) bool {
		for _, x := range ms {
			if x.index && x.repo == m.repo && w.hasRevision(x.repo, x.desc.Digest) {
				for _, c := range x.children {
					if c == m.desc.Digest {
						return true
					}
				}
			}
		}
		return false
	}
	tagsOf := func(repo string, d digest.Digest) []string {
		var out []string
		for _, tag := range tags {
			b, err := os.ReadFile(filepath.Join(w.root, "docker", "registry", "v2", "repositories", repo, "_manifests", "tags", tag, "current", "link"))
			if err == nil && string(b) == d.String() {
				out = append(out, tag)
			}
		}
		return out
	}
	image := func(repo, tag string, subject *events.Descriptor) *pushed {
		cfg := w.pushBlob(r, repo, mtConf, 16+r.IntN(32))
		var layer events.Descriptor
		if src := livePick("", false); src != nil && r.IntN(3) == 0 && w.hasBlob(src.blobs[1].Digest) {
			layer = src.blobs[1]
			w.mountBlob(repo, src.repo, layer)
			counts["mount"]++
		} else {
			layer = w.pushBlob(r, repo, mtLayer, 32+r.IntN(256))
		}
		blobs := []events.Descriptor{cfg, layer}
		m := &pushed{repo: repo, blobs: blobs, desc: w.putManifest(repo, tag, blobs, nil, subject)}
		ms = append(ms, m)
		return m
	}
	ctx := context.Background()
	for i := 0; i < ops; i++ {
		repo, tag := repos[r.IntN(len(repos))], tags[r.IntN(len(tags))]
		op := r.IntN(100)
		switch {
		case op < 10:
			if r.IntN(4) == 0 {
				tag = ""
			}
			image(repo, tag, nil)
			counts["push"]++
		case op < 16:
			if m := livePick(repo, true); m != nil {
				w.linkTag(repo, tag, m.desc.Digest)
				w.emit(events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: m.desc.Digest}})
				counts["tag"]++
			}
		case op < 22:
			w.must(w.store.DeleteTag(ctx, repo, tag))
			w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: tag}})
			counts["untag"]++
		case op < 26:
			// A delete by digest also removes the tags that point at it,
			// as the registry does. Children of a live index are left
			// alone: refgc keeps their data on purpose, the oracle not.
			if m := livePick(repo, true); m != nil && !isChild(m) {
				for _, tg := range tagsOf(repo, m.desc.Digest) {
					w.must(w.store.DeleteTag(ctx, repo, tg))
					w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: tg}})
				}
				w.must(w.store.DeleteRevision(ctx, repo, m.desc.Digest, nil))
				w.emit(events.Event{Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: repo, Digest: m.desc.Digest}})
				counts["delete manifest"]++
			}
		case op < 28:
			// Delete a layer link: one that a live image uses (the image
			// breaks, its blob stays reachable), or a stray upload.
			if m := livePick(repo, false); m != nil && r.IntN(2) == 0 {
				d := m.blobs[1].Digest
				w.must(w.store.DeleteLayerLink(ctx, repo, d))
				w.emit(events.Event{Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: repo, Digest: d}})
				counts["delete used layer"]++
				break
			}
			d := w.pushBlob(r, repo, mtLayer, 64).Digest
			if r.IntN(2) == 0 {
				w.must(w.store.DeleteLayerLink(ctx, repo, d))
				w.emit(events.Event{Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: repo, Digest: d}})
				counts["delete blob"]++
			}
		case op < 30:
			var children []events.Descriptor
			var cds []digest.Digest
			for range 1 + r.IntN(2) {
				c := livePick(repo, false)
				if c == nil || r.IntN(2) == 0 {
					c = image(repo, "", nil)
				}
				children = append(children, c.desc)
				cds = append(cds, c.desc.Digest)
			}
			desc := w.putManifest(repo, tag, nil, children, nil)
			ms = append(ms, &pushed{repo: repo, desc: desc, children: cds, index: true})
			counts["index"]++
		case op < 32:
			if m := livePick(repo, true); m != nil {
				subj := m.desc
				image(repo, "", &subj)
				counts["referrer"]++
			}
		case op < 77:
			if m := livePick("", true); m != nil {
				w.emit(events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: m.repo, Digest: m.desc.Digest}})
				counts["pull"]++
			}
		case op < 99:
			w.clock = w.clock.Add(time.Duration(r.Int64N(int64(testGrace / 3))))
			counts["clock"]++
		default:
			rep := w.pass()
			counts["pass"]++
			counts["unlinked"] += rep.Unlinked
			counts["purged"] += rep.Purged
			counts["refused"] += rep.Refused
			counts["healed"] += rep.Healed
		}
		if w.net != nil {
			w.flush(false)
		}
		// Forget manifests that are gone for good.
		if i%500 == 499 {
			kept := ms[:0]
			for _, m := range ms {
				if w.hasBlob(m.desc.Digest) {
					kept = append(kept, m)
				}
			}
			ms = kept
		}
	}
	if w.net != nil {
		// Every queue delivers, and a reconcile finds what was lost, so
		// that all garbage can go.
		w.flush(true)
		if _, err := w.rec.Reconcile(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	rep := w.finish()
	counts["unlinked"] += rep.Unlinked
	counts["purged"] += rep.Purged
	t.Logf("%d operations in %s: %v", ops, time.Since(start).Round(time.Millisecond), counts)
	if counts["purged"] == 0 || counts["unlinked"] == 0 {
		t.Errorf("nothing collected: %v", counts)
	}
}

// TestRandomRegistry drives a real registry over HTTP, its notifications
// through the real webhook, with random pushes, tags, deletes, indexes,
// referrers, mounts and pulls, interleaved with clock advances and
// collector passes. Every pass is checked against the oracle computed
// right before it; a final drain must leave exactly the reachable objects.
// Registry operations are slow under the race detector: the default is
// sized to run in about a minute; -collector.ops sets the count.
func TestRandomRegistry(t *testing.T) {
	ops := 1000
	if testing.Short() {
		ops /= 10
	}
	if *opsFlag > 0 {
		ops = *opsFlag
	}
	r := rand.New(rand.NewPCG(seed(t), 11))
	e := newEnv(t, refcount.PolicyDelete)
	// Delivery faults, unless -collector.nofaults: a second replica on the
	// same storage takes some of the writes (its queue is another, so its
	// notifications interleave with the first's); manifest pushes of a
	// repository are held back for a while (late, and reordered against
	// the deletes and pulls that pass them); notifications are duplicated;
	// a few manifest pushes are lost; the webhook is refused for a while
	// (the registry retries, its queue blocks).
	faults := !*noFaultsFlag
	regs := []*regtest.Registry{e.reg}
	if faults {
		regs = append(regs, e.reg.Replica(t))
		for _, rg := range regs {
			rg.Faults.DuplicateFraction(0.02, rand.New(rand.NewPCG(r.Uint64(), 1)))
			rg.Faults.Where(func(n regtest.Notification) bool { return n.IsManifest() && n.Action == "push" }).
				DropFraction(0.01, rand.New(rand.NewPCG(r.Uint64(), 2)))
		}
	}
	heldFor := 0 // operations until held notifications are released
	refusedFor := 0
	var unavailable, healLag time.Duration
	via := func() *regtest.Registry { return regs[r.IntN(len(regs))] }
	settle := func() {
		for _, rg := range regs {
			rg.Faults.Accept()
			rg.Faults.Release()
		}
		refusedFor, heldFor = 0, 0
		for _, rg := range regs[1:] {
			regtest.WaitFor(t, "the replica's queue delivered", func() bool { return rg.Faults.Pending() == 0 })
		}
		e.settle()
	}
	repos := []string{"a", "b", "c/d"}
	tagNames := []string{"v1", "v2", "latest"}
	tags := map[string]v1.Image{} // "repo:tag" -> image, as far as the test knows
	children := map[string]bool{} // "repo@digest" of index children: never deleted by digest
	var images []struct {         // images pushed, to push again under another tag
		repo string
		img  v1.Image
	}
	broken := map[string]bool{} // "repo@digest" of images with a layer unlinked
	counts := map[string]int{}
	start := time.Now()
	push := func(ref string, img v1.Image) {
		via().Push(t, ref, img)
		// The client uploads again the blobs it lost, unless it finds the
		// manifest in the repository already: then it uploads nothing,
		// and an image broken there stays broken.
		rp, _, _ := strings.Cut(ref, ":")
		for _, l := range regtest.BlobDigests(t, img) {
			link := filepath.Join(e.reg.Root, "docker", "registry", "v2", "repositories", rp, "_layers", l.Algorithm, l.Hex, "link")
			if _, err := os.Stat(link); err != nil {
				return
			}
		}
		delete(broken, rp+"@"+regtest.Digest(t, img).String())
	}
	pickTag := func() (string, v1.Image) {
		if len(tags) == 0 {
			return "", nil
		}
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		k := keys[r.IntN(len(keys))]
		return k, tags[k]
	}
	forgetDigest := func(repo string, d v1.Hash) {
		for k, img := range tags {
			if strings.HasPrefix(k, repo+":") && regtest.Digest(t, img) == d {
				delete(tags, k)
			}
		}
	}
	for i := 0; i < ops; i++ {
		repo, tag := repos[r.IntN(len(repos))], tagNames[r.IntN(len(tagNames))]
		if faults {
			switch {
			case heldFor > 0:
				if heldFor--; heldFor == 0 {
					for _, rg := range regs {
						rg.Faults.Release()
					}
				}
			case r.IntN(40) == 0:
				heldFor = 1 + r.IntN(20)
				via().Faults.Where(regtest.ManifestPush(repo)).Hold()
				counts["hold"]++
			}
			switch {
			case refusedFor > 0:
				if refusedFor--; refusedFor == 0 {
					for _, rg := range regs {
						rg.Faults.Accept()
					}
				}
			case r.IntN(100) == 0:
				refusedFor = 1 + r.IntN(5)
				via().Faults.Refuse(http.StatusServiceUnavailable)
				counts["refuse"]++
			}
		}
		switch op := r.IntN(100); {
		case op < 12:
			img := regtest.RandomImage(t, 1)
			push(repo+":"+tag, img)
			tags[repo+":"+tag] = img
			images = append(images, struct {
				repo string
				img  v1.Image
			}{repo, img})
			counts["push"]++
		case op < 17:
			if len(images) > 0 {
				im := images[r.IntN(len(images))]
				push(im.repo+":"+tag, im.img)
				tags[im.repo+":"+tag] = im.img
				counts["tag"]++
			}
		case op < 23:
			if k, _ := pickTag(); k != "" {
				rp, tg, _ := strings.Cut(k, ":")
				via().DeleteTag(t, rp, tg)
				delete(tags, k)
				counts["untag"]++
			}
		case op < 26:
			if k, img := pickTag(); k != "" {
				rp, _, _ := strings.Cut(k, ":")
				d := regtest.Digest(t, img)
				if !children[rp+"@"+d.String()] {
					e.reg.DeleteManifest(t, rp, d) // the registry untags it too
					forgetDigest(rp, d)
					counts["delete manifest"]++
				}
			}
		case op < 28:
			if k, img := pickTag(); k != "" && r.IntN(2) == 0 {
				// Unlink a layer a live image uses: the image breaks, its
				// data stays reachable.
				rp, _, _ := strings.Cut(k, ":")
				l := regtest.BlobDigests(t, img)[1]
				if code := e.reg.BlobStatus(t, rp, l); code == http.StatusOK {
					e.reg.DeleteBlob(t, rp, l)
					broken[rp+"@"+regtest.Digest(t, img).String()] = true
					counts["delete used layer"]++
				}
				break
			}
			layer, err := random.Layer(64, "application/vnd.oci.image.layer.v1.tar")
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteLayer(e.reg.Repo(t, repo), layer); err != nil {
				t.Fatal(err)
			}
			if r.IntN(2) == 0 {
				d, _ := layer.Digest()
				e.reg.DeleteBlob(t, repo, d)
				counts["delete blob"]++
			}
		case op < 30:
			a, b := regtest.RandomImage(t, 1), regtest.RandomImage(t, 1)
			e.reg.PushIndex(t, repo, tag, a, b)
			delete(tags, repo+":"+tag)
			children[repo+"@"+regtest.Digest(t, a).String()] = true
			children[repo+"@"+regtest.Digest(t, b).String()] = true
			counts["index"]++
		case op < 32:
			if k, img := pickTag(); k != "" {
				rp, _, _ := strings.Cut(k, ":")
				e.reg.PushReferrer(t, rp, regtest.Describe(t, img), "application/vnd.example.sig")
				counts["referrer"]++
			}
		case op < 35:
			if k, img := pickTag(); k != "" && !strings.HasPrefix(k, repo+":") &&
				!broken[strings.SplitN(k, ":", 2)[0]+"@"+regtest.Digest(t, img).String()] {
				e.reg.Mount(t, k, repo+":"+tag)
				tags[repo+":"+tag] = img
				delete(broken, repo+"@"+regtest.Digest(t, img).String())
				counts["mount"]++
			}
		case op < 60:
			if k, _ := pickTag(); k != "" {
				rp, tg, _ := strings.Cut(k, ":")
				if code := e.reg.ManifestStatus(t, rp, tg); code != http.StatusOK {
					t.Fatalf("%s answers %d", k, code)
				}
				counts["pull"]++
			}
		case op < 97:
			e.advance(time.Duration(r.Int64N(int64(testGrace))))
			counts["clock"]++
		default:
			if !faults || r.IntN(2) == 0 {
				settle() // else the pass runs with notifications still held, late or refused
			}
			before, err := regtest.Reachable(e.reg.Root, false)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := e.col.Pass(context.Background())
			if err != nil || rep.Errors > 0 {
				t.Fatalf("pass: %v (%d errors)", err, rep.Errors)
			}
			counts["refused"] += rep.Refused
			counts["healed"] += rep.Healed
			unavailable = max(unavailable, rep.Unavailable)
			healLag = max(healLag, rep.HealLag)
			after, err := regtest.Present(e.reg.Root)
			if err != nil {
				t.Fatal(err)
			}
			if lost := before.Minus(after); len(lost) > 0 {
				t.Fatalf("reachable objects deleted by a pass: %v", lost)
			}
			counts["pass"]++
			counts["unlinked"] += rep.Unlinked
			counts["purged"] += rep.Purged
		}
	}
	settle()
	if faults {
		// What was lost is found by a reconcile, so that all garbage can go.
		if _, err := e.rec.Reconcile(context.Background(), true); err != nil {
			t.Fatal(err)
		}
	}
	rep := e.collectAndVerify()
	counts["unlinked"] += rep.Unlinked
	counts["purged"] += rep.Purged
	for _, rg := range regs {
		st := rg.Faults.Stats()
		counts["notifications dropped"] += st.Dropped
		counts["notifications duplicated"] += st.Duplicated
		counts["notifications held"] += st.Held
		counts["requests refused"] += st.Refused
	}
	t.Logf("longest unavailability between an unlink and its heal: %s; longest time from the proving notification's receipt to the heal: %s",
		unavailable, healLag)
	for k, img := range tags {
		rp, _, _ := strings.Cut(k, ":")
		if !broken[rp+"@"+regtest.Digest(t, img).String()] {
			e.mustPull(k)
		}
	}
	t.Logf("%d operations in %s: %v", ops, time.Since(start).Round(time.Millisecond), counts)
	if counts["purged"] == 0 {
		t.Errorf("nothing purged: %v", counts)
	}
}
