package collector_test

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

var (
	benchManifests = flag.Int("reconcile.manifests", 10000, "manifests in the reconcile benchmark's storage")
	benchRepos     = flag.Int("reconcile.repos", 100, "repositories in the reconcile benchmark's storage")
	benchRoot      = flag.String("reconcile.root", "", "directory that keeps the reconcile benchmark's storage between runs "+
		"(one layout per size, written once; default: a temporary one)")
	benchProfile = flag.String("reconcile.heapprofile", "", "path prefix: each sub-benchmark writes <prefix>-<name>.pprof, "+
		"the sites holding its heap at the GC cycle that marked its highest live heap")
)

// benchStorage returns the root of the benchmark's storage, written by
// benchLayout unless -reconcile.root already holds one of this size.
func benchStorage(b *testing.B, repos, manifests, tagEvery int) string {
	b.Helper()
	if *benchRoot == "" {
		root := b.TempDir()
		benchLayout(b, root, repos, manifests, tagEvery)
		return root
	}
	root := filepath.Join(*benchRoot, fmt.Sprintf("m%d-r%d-t%d", manifests, repos, tagEvery))
	done := filepath.Join(root, "complete")
	if _, err := os.Stat(done); err == nil {
		return root
	}
	if err := os.RemoveAll(root); err != nil {
		b.Fatal(err)
	}
	benchLayout(b, root, repos, manifests, tagEvery)
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	return root
}

// peaks is regtest.Peaks, and with -reconcile.heapprofile also keeps the
// heap profile (sampled every 4 KiB) of the GC cycle that marked the
// highest live heap while fn ran, and writes its sites by bytes in use,
// less what they held before fn, to <prefix>-<name>.txt (objects allocated
// while that cycle marked count in the live heap, not in the profile). The profile is copied into buffers allocated before
// fn starts, so that keeping it does not add to what it measures.
func peaks(b *testing.B, fn func()) regtest.Heap {
	b.Helper()
	if *benchProfile == "" {
		return regtest.Peaks(fn)
	}
	n, _ := runtime.MemProfile(nil, false)
	best, scratch := make([]runtime.MemProfileRecord, 2*n+4096), make([]runtime.MemProfileRecord, 2*n+4096)
	before := make([]runtime.MemProfileRecord, 2*n+4096)
	runtime.GC()
	runtime.GC() // the profile now holds what the process held before fn
	beforeN, _ := runtime.MemProfile(before, false)
	bestN, bestLive := 0, uint64(0)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var lastGC uint64
		samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			metrics.Read(samples)
			gc, live := samples[1].Value.Uint64(), samples[0].Value.Uint64()
			if gc == lastGC {
				continue
			}
			lastGC = gc
			if live > bestLive {
				if k, ok := runtime.MemProfile(scratch, false); ok {
					best, scratch, bestN, bestLive = scratch, best, k, live
				}
			}
		}
	}()
	h := regtest.Peaks(fn)
	close(stop)
	<-done
	sites := map[string]float64{}
	total := 0.0
	rate := float64(runtime.MemProfileRate)
	add := func(recs []runtime.MemProfileRecord, sign float64) {
		for _, r := range recs {
			if r.InUseObjects() == 0 {
				continue
			}
			avg := float64(r.InUseBytes()) / float64(r.InUseObjects())
			scaled := sign * float64(r.InUseBytes()) / (1 - math.Exp(-avg/rate))
			var names []string
			frames := runtime.CallersFrames(r.Stack())
			for len(names) < 8 {
				f, more := frames.Next()
				if !strings.HasPrefix(f.Function, "runtime.") && !strings.HasPrefix(f.Function, "internal/runtime/") {
					names = append(names, strings.TrimPrefix(f.Function, "github.com/"))
				}
				if !more {
					break
				}
			}
			sites[strings.Join(names, " < ")] += scaled
			total += scaled
		}
	}
	add(best[:bestN], 1)
	add(before[:beforeN], -1)
	keys := slices.SortedFunc(maps.Keys(sites), func(a, b string) int { return cmp.Compare(sites[b], sites[a]) })
	var out strings.Builder
	fmt.Fprintf(&out, "live heap at this GC: %.2f MiB; profiled in use, less before: %.2f MiB\n", float64(bestLive)/(1<<20), total/(1<<20))
	for _, k := range keys[:min(len(keys), 40)] {
		fmt.Fprintf(&out, "%8.1f KiB  %s\n", sites[k]/1024, k)
	}
	name := strings.NewReplacer("/", "-", " ", "_").Replace(b.Name())
	if err := os.WriteFile(fmt.Sprintf("%s-%s.txt", *benchProfile, name), []byte(out.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return h
}

// benchLayout writes a registry's storage directly on disk: repos
// repositories with manifests/repos OCI image manifests each; every
// manifest has its own config and layer and one layer shared within its
// repository; every tagEvery-th manifest is tagged (v<i>).
func benchLayout(b *testing.B, root string, repos, manifests, tagEvery int) {
	b.Helper()
	base := filepath.Join(root, "docker/registry/v2")
	write := func(p string, content []byte) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, content, 0o644)
	}
	blob := func(content []byte) (digest.Digest, error) {
		d := digest.FromBytes(content)
		return d, write(filepath.Join(base, "blobs/sha256", d.Encoded()[:2], d.Encoded(), "data"), content)
	}
	link := func(p string, d digest.Digest) error { return write(p, []byte(d.String())) }
	type desc struct {
		MediaType string        `json:"mediaType"`
		Digest    digest.Digest `json:"digest"`
		Size      int64         `json:"size"`
	}
	per := manifests / repos
	var g errgroup.Group
	g.SetLimit(8)
	for r := range repos {
		g.Go(func() error {
			repo := filepath.Join(base, "repositories", fmt.Sprintf("team%d/app%d", r%10, r))
			var shared []desc
			for s := range 8 {
				c := []byte(fmt.Sprintf("shared layer %d of repository %d", s, r))
				d, err := blob(c)
				if err != nil {
					return err
				}
				shared = append(shared, desc{"application/vnd.oci.image.layer.v1.tar", d, int64(len(c))})
			}
			for i := range per {
				var ds []desc
				for _, c := range [][]byte{
					[]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","n":"%d-%d"}`, r, i)),
					[]byte(fmt.Sprintf("layer %d of repository %d", i, r)),
				} {
					d, err := blob(c)
					if err != nil {
						return err
					}
					ds = append(ds, desc{"application/vnd.oci.image.layer.v1.tar", d, int64(len(c))})
				}
				ds[0].MediaType = "application/vnd.oci.image.config.v1+json"
				layers := []desc{shared[i%len(shared)], ds[1]}
				m, err := json.Marshal(map[string]any{"schemaVersion": 2,
					"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": ds[0], "layers": layers})
				if err != nil {
					return err
				}
				md, err := blob(m)
				if err != nil {
					return err
				}
				if err := link(filepath.Join(repo, "_manifests/revisions/sha256", md.Encoded(), "link"), md); err != nil {
					return err
				}
				for _, l := range append(layers, ds[0]) {
					if err := link(filepath.Join(repo, "_layers/sha256", l.Digest.Encoded(), "link"), l.Digest); err != nil {
						return err
					}
				}
				if i%tagEvery == 0 {
					tag := filepath.Join(repo, "_manifests/tags", fmt.Sprintf("v%d", i))
					if err := link(filepath.Join(tag, "index/sha256", md.Encoded(), "link"), md); err != nil {
						return err
					}
					if err := link(filepath.Join(tag, "current/link"), md); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}

func maxHeap(a, b regtest.Heap) regtest.Heap {
	return regtest.Heap{Objects: max(a.Objects, b.Objects), Live: max(a.Live, b.Live)}
}

// reportHeap reports both peaks: the heap's objects (garbage included,
// which follows the GC's target and so everything else the process holds)
// and the live heap (what the operation held at once).
func reportHeap(b *testing.B, h regtest.Heap) {
	b.ReportMetric(float64(h.Objects)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(h.Live)/(1<<20), "peak-live-MiB")
}

// BenchmarkReconcilePass compares one read-only reconcile pass (Verify: the
// full walk, every manifest read and parsed, the projection compared both
// ways and recounted) with Distribution's own mark and sweep in dry-run
// mode on the same filesystem storage.
func BenchmarkReconcilePass(b *testing.B) {
	ctx := context.Background()
	if *benchProfile != "" {
		runtime.MemProfileRate = 4 << 10
	}
	start := time.Now()
	root := benchStorage(b, *benchRepos, *benchManifests, 2)
	st, err := store.New(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		b.Fatal(err)
	}
	proj, err := refcount.Open(filepath.Join(b.TempDir(), "refs.db"), refcount.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer proj.Close()
	r, err := reconcile.New(reconcile.Config{Projection: proj, Store: st,
		Log: &collector.DirectLog{P: proj}, Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	// Fill the projection from the walk itself: afterwards it matches
	// storage, and a pass is the steady-state check.
	if d, err := r.Reconcile(ctx, true); err != nil || d.Published == 0 {
		b.Fatalf("fill: %v %v", d, err)
	}
	b.Logf("storage and projection of %d manifests ready in %s", *benchManifests, time.Since(start).Round(time.Millisecond))

	b.Run("reconcile", func(b *testing.B) {
		b.ReportAllocs()
		var peak regtest.Heap
		for b.Loop() {
			peak = maxHeap(peak, peaks(b, func() {
				d, err := r.Verify(ctx)
				if err != nil || !d.Clean() {
					b.Fatalf("verify: %v %v", d, err)
				}
				if d.Scanned["revisions"] != *benchManifests {
					b.Fatalf("scanned %v", d.Scanned)
				}
			}))
		}
		reportHeap(b, peak)
	})
	// The projection's own recount, which a pass includes, alone: it holds
	// every node record in memory at once.
	b.Run("check-only", func(b *testing.B) {
		b.ReportAllocs()
		var peak regtest.Heap
		for b.Loop() {
			peak = maxHeap(peak, peaks(b, func() {
				if ms, err := proj.Check(); err != nil || len(ms) > 0 {
					b.Fatalf("check: %v %v", ms, err)
				}
			}))
		}
		reportHeap(b, peak)
	})
	b.Run("markandsweep", func(b *testing.B) {
		b.ReportAllocs()
		drv := st.StorageDriver()
		var peak regtest.Heap
		for b.Loop() {
			peak = maxHeap(peak, peaks(b, func() {
				reg, err := storage.NewRegistry(ctx, drv)
				if err != nil {
					b.Fatal(err)
				}
				if err := storage.MarkAndSweep(ctx, drv, reg, storage.GCOpts{DryRun: true, RemoveUntagged: true, Quiet: true}); err != nil {
					b.Fatal(err)
				}
			}))
		}
		reportHeap(b, peak)
	})
}
