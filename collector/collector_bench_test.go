package collector_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
)

const (
	gcBenchManifests  = 2000
	gcBenchConfigSize = 64
	gcBenchLayerSize  = 4096
)

// garbage fills the world's storage with n untagged images (a config and
// a layer each, linked in the repository) and applies their events: 6n
// objects to remove (n revisions, 2n layer links, 3n blobs). It returns
// the paths a raw delete would remove and the bytes of blob data.
func (w *world) garbage(r *rand.Rand, n int) (paths []string, bytes int64) {
	w.t.Helper()
	var evs []events.Event
	blob := func(size int, mt string) events.Descriptor {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		d := w.writeBlob(b)
		d.MediaType = mt
		return d
	}
	for i := range n {
		repo := []string{"a", "b", "c", "d"}[i%4]
		cfg, layer := blob(gcBenchConfigSize, mtConf), blob(gcBenchLayerSize, mtLayer)
		for _, d := range []events.Descriptor{cfg, layer} {
			w.linkLayer(repo, d.Digest)
			paths = append(paths, filepath.Join(w.repoDir(repo), "_layers", "sha256", d.Digest.Encoded()),
				filepath.Dir(w.blobPath(d.Digest)))
			bytes += d.Size
		}
		raw := []byte(`{"schemaVersion":2,"mediaType":"` + mtImage + `","config":{"mediaType":"` + mtConf +
			`","digest":"` + cfg.Digest.String() + `","size":64},"layers":[{"mediaType":"` + mtLayer +
			`","digest":"` + layer.Digest.String() + `","size":4096}]}`)
		m := w.writeBlob(raw)
		w.linkRevision(repo, m.Digest)
		paths = append(paths, filepath.Join(w.repoDir(repo), "_manifests", "revisions", "sha256", m.Digest.Encoded()),
			filepath.Dir(w.blobPath(m.Digest)))
		bytes += m.Size
		evs = append(evs, events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: repo,
			Digest: m.Digest, MediaType: mtImage, Size: m.Size, Blobs: []events.Descriptor{cfg, layer}}})
		if len(evs) == 500 {
			w.emit(evs...)
			evs = nil
		}
	}
	if len(evs) > 0 {
		w.emit(evs...)
	}
	return paths, bytes
}

// BenchmarkCollectorDeletes measures how fast the collector unlinks and
// purges garbage on the filesystem driver with 8 operations in flight,
// against raw os.RemoveAll of the same paths by 8 goroutines.
func BenchmarkCollectorDeletes(b *testing.B) {
	for _, sync := range []bool{false, true} {
		name := "collector"
		if sync {
			name = "collector-fsync"
		}
		b.Run(name, func(b *testing.B) { benchCollector(b, sync) })
	}
	b.Run("os.RemoveAll", benchRemoveAll)
}

// benchCollector times passes until the garbage is all gone; with sync
// the projection fsyncs every transaction, as a daemon's does.
func benchCollector(b *testing.B, sync bool) {
	var objects, bytes int64
	var elapsed, check time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		w := newWorldSync(b, 8, sync)
		paths, _ := w.garbage(rand.New(rand.NewPCG(uint64(i), 1)), gcBenchManifests)
		b.StartTimer()
		start := time.Now()
		var unlinked, purged int
		for pass := 0; unlinked+purged < len(paths) && pass < 10; pass++ {
			w.clock = w.clock.Add(testRetention + testGrace)
			rep, err := w.col.Pass(context.Background())
			if err != nil || rep.Errors > 0 {
				b.Fatalf("pass: %v (%d errors)", err, rep.Errors)
			}
			unlinked += rep.Unlinked
			purged += rep.Purged
			bytes += rep.PurgedBytes
			check += rep.CheckDuration
		}
		elapsed += time.Since(start)
		b.StopTimer()
		if unlinked+purged != len(paths) {
			b.Fatalf("removed %d+%d objects, want %d", unlinked, purged, len(paths))
		}
		left, err := regtest.Present(w.root)
		if err != nil || left.Len() > 0 {
			b.Fatalf("left on disk: %v %v", left.Len(), err)
		}
		objects += int64(len(paths))
	}
	b.ReportMetric(float64(objects)/elapsed.Seconds(), "objects/s")
	b.ReportMetric(float64(bytes)/elapsed.Seconds(), "bytes/s")
	b.ReportMetric(100*check.Seconds()/elapsed.Seconds(), "check-%")
}

// benchRemoveAll is the baseline: os.RemoveAll of the same paths by 8
// goroutines, nothing else.
func benchRemoveAll(b *testing.B) {
	var objects, bytes int64
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		w := newWorld(b, 8)
		paths, n := w.garbage(rand.New(rand.NewPCG(uint64(i), 1)), gcBenchManifests)
		b.StartTimer()
		start := time.Now()
		ch := make(chan string)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range ch {
					if err := os.RemoveAll(p); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for _, p := range paths {
			ch <- p
		}
		close(ch)
		wg.Wait()
		elapsed += time.Since(start)
		b.StopTimer()
		objects += int64(len(paths))
		bytes += n
	}
	b.ReportMetric(float64(objects)/elapsed.Seconds(), "objects/s")
	b.ReportMetric(float64(bytes)/elapsed.Seconds(), "bytes/s")
}
