package collector_test

import (
	"cmp"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// against raw os.RemoveAll of the same paths by 8 goroutines, and against
// the system calls the store itself makes for them (unlink+rmdir). paired
// alternates the three, the projection durable, one world each per
// iteration, and reports the ratios: on a machine shared with other work
// the load moves between sub-benchmarks, less within one iteration.
//
// Every world is synced to disk before the clock starts: garbage is old
// (past the grace), its files written back. Removing files whose data
// never left the page cache (ext4's delayed allocation: no blocks yet)
// costs the kernel much less, and favoured whichever side came first.
func BenchmarkCollectorDeletes(b *testing.B) {
	for _, sync := range []bool{false, true} {
		name := "collector"
		if sync {
			name = "collector-fsync"
		}
		b.Run(name, func(b *testing.B) { benchCollector(b, sync) })
	}
	b.Run("os.RemoveAll", func(b *testing.B) { benchRaw(b, rawRemoval{}) })
	b.Run("os.RemoveAll+syncfs", func(b *testing.B) { benchRaw(b, rawRemoval{syncfs: true}) })
	b.Run("os.RemoveAll-keyorder", func(b *testing.B) { benchRaw(b, rawRemoval{keyOrder: true}) })
	b.Run("unlink+rmdir", func(b *testing.B) { benchRaw(b, rawRemoval{minimal: true}) })
	b.Run("unlink+rmdir-keyorder", func(b *testing.B) { benchRaw(b, rawRemoval{minimal: true, keyOrder: true}) })
	b.Run("unlink+rmdir+commits-between", func(b *testing.B) { benchRaw(b, rawRemoval{minimal: true, commits: commitsBetween}) })
	b.Run("unlink+rmdir+commits-beside", func(b *testing.B) { benchRaw(b, rawRemoval{minimal: true, commits: commitsBeside}) })
	b.Run("paired", func(b *testing.B) {
		var col, raw, durable, minimal deleteRun
		for i := 0; i < b.N; i++ {
			raw.add(rawOnce(b, i, rawRemoval{}))
			col.add(collectOnce(b, i, true))
			durable.add(rawOnce(b, i, rawRemoval{syncfs: true}))
			minimal.add(rawOnce(b, i, rawRemoval{minimal: true}))
		}
		b.ReportMetric(col.rate(), "collector-objects/s")
		b.ReportMetric(raw.rate(), "removeall-objects/s")
		b.ReportMetric(durable.rate(), "removeall-syncfs-objects/s")
		b.ReportMetric(minimal.rate(), "unlink-rmdir-objects/s")
		b.ReportMetric(col.rate()/raw.rate(), "ratio")
		b.ReportMetric(col.rate()/durable.rate(), "ratio-durable")
		// Against the two system calls per object the store makes on the
		// filesystem, by 8 goroutines in the world's order: the floor of
		// any removal of these paths.
		b.ReportMetric(col.rate()/minimal.rate(), "ratio-unlink-rmdir")
		// The collector's removals alone, its other work left out: how
		// far its storage operations are from the bare ones.
		b.ReportMetric(float64(col.objects)/col.storage.Seconds()/raw.rate(), "ratio-storage")
		b.ReportMetric(100*col.storage.Seconds()/col.elapsed.Seconds(), "collector-storage-%")
		col.report(b, "collector-")
		raw.report(b, "removeall-")
		minimal.report(b, "unlink-rmdir-")
	})
}

// deleteRun is what one timed removal of the garbage did.
type deleteRun struct {
	objects, bytes  int64
	elapsed, check  time.Duration
	storage         time.Duration // the collector's storage operations (Report.StorageDuration)
	cpuUser, cpuSys time.Duration // the process's, while the clock ran
}

func (r *deleteRun) add(o deleteRun) {
	r.objects += o.objects
	r.bytes += o.bytes
	r.elapsed += o.elapsed
	r.check += o.check
	r.storage += o.storage
	r.cpuUser += o.cpuUser
	r.cpuSys += o.cpuSys
}

func (r deleteRun) rate() float64 { return float64(r.objects) / r.elapsed.Seconds() }

// report reports the CPU the process spent per object removed, in user
// space and in the kernel, prefixed by name.
func (r deleteRun) report(b *testing.B, name string) {
	b.ReportMetric(float64(r.cpuUser.Microseconds())/float64(r.objects), name+"user-µs/object")
	b.ReportMetric(float64(r.cpuSys.Microseconds())/float64(r.objects), name+"sys-µs/object")
}

// cpuTimes is the CPU the process has spent so far, in user space and in
// the kernel.
func cpuTimes(b *testing.B) (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// timed runs fn with the benchmark's clock running and returns the wall
// and CPU time it took.
func timed(b *testing.B, fn func()) (r deleteRun) {
	u0, s0 := cpuTimes(b)
	b.StartTimer()
	start := time.Now()
	fn()
	r.elapsed = time.Since(start)
	b.StopTimer()
	u1, s1 := cpuTimes(b)
	r.cpuUser, r.cpuSys = u1-u0, s1-s0
	return r
}

// garbageWorld builds a world holding the garbage, synced to disk, with
// the benchmark's clock stopped.
func garbageWorld(b *testing.B, i int, sync bool) (*world, []string, int64) {
	b.StopTimer()
	w := newWorldSync(b, 8, sync)
	paths, n := w.garbage(rand.New(rand.NewPCG(uint64(i), 1)), gcBenchManifests)
	syscall.Sync()
	return w, paths, n
}

// benchCollector times passes until the garbage is all gone; with sync
// the projection fsyncs every transaction, as a daemon's does.
func benchCollector(b *testing.B, sync bool) {
	var r deleteRun
	for i := 0; i < b.N; i++ {
		r.add(collectOnce(b, i, sync))
	}
	b.ReportMetric(r.rate(), "objects/s")
	b.ReportMetric(float64(r.bytes)/r.elapsed.Seconds(), "bytes/s")
	b.ReportMetric(100*r.check.Seconds()/r.elapsed.Seconds(), "check-%")
	b.ReportMetric(100*r.storage.Seconds()/r.elapsed.Seconds(), "storage-%")
	r.report(b, "")
}

// collectOnce builds a world of garbage and times the passes that remove
// it, checking after the clock stops that the storage is empty.
func collectOnce(b *testing.B, i int, sync bool) deleteRun {
	w, paths, _ := garbageWorld(b, i, sync)
	var unlinked, purged int
	var bytes int64
	var check, storage time.Duration
	r := timed(b, func() {
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
			storage += rep.StorageDuration
		}
	})
	r.bytes, r.check, r.storage = bytes, check, storage
	if unlinked+purged != len(paths) {
		b.Fatalf("removed %d+%d objects, want %d", unlinked, purged, len(paths))
	}
	left, err := regtest.Present(w.root)
	if err != nil || left.Len() > 0 {
		b.Fatalf("left on disk: %v %v", left.Len(), err)
	}
	r.objects = int64(len(paths))
	return r
}

// rawRemoval is how a baseline removes the garbage's paths.
type rawRemoval struct {
	syncfs   bool // then syncfs(2) of the storage's filesystem, inside the clock
	keyOrder bool // in the collector's order, not the world's
	minimal  bool // unlink the one file and rmdir its directory, not os.RemoveAll
	// commits, when set, is what a collector must add to the removals at
	// the least: two small synchronous writes (a page and fdatasync, as a
	// bbolt commit ends) to a file on the storage's filesystem per 256
	// removals, as a round records its intents and then commits its
	// removals. Each forces the filesystem's journal, with the removals
	// in it, to disk.
	commits commitMode
}

// commitMode is when rawRemoval's synchronous writes run.
type commitMode int

const (
	noCommits commitMode = iota
	// commitsBetween: between rounds of 256 removals, which wait for them
	// (the collector's rounds).
	commitsBetween
	// commitsBeside: beside the removals, which never wait for them (the
	// best any design with durable intents could do).
	commitsBeside
)

// commitsPerRound and commitRound are rawRemoval's commits: two per 256.
const (
	commitsPerRound = 2
	commitRound     = 256
)

// syncedWrites writes a page to f at a rotating offset and fdatasyncs it,
// n times.
func syncedWrites(b *testing.B, f *os.File, seq *int64, n int) {
	page := make([]byte, 4096)
	for range n {
		*seq++
		if _, err := f.WriteAt(page, (*seq%256)*4096); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRaw is a baseline: the same paths removed by 8 goroutines, nothing
// else.
func benchRaw(b *testing.B, how rawRemoval) {
	var r deleteRun
	for i := 0; i < b.N; i++ {
		r.add(rawOnce(b, i, how))
	}
	b.ReportMetric(r.rate(), "objects/s")
	b.ReportMetric(float64(r.bytes)/r.elapsed.Seconds(), "bytes/s")
	r.report(b, "")
}

// rawOnce builds a world of garbage and times the removal of its paths by
// 8 goroutines and, with syncfs, the syncfs(2) of the storage's
// filesystem that makes the removals durable. The paths go in the order
// the world made them (an image at a time, the repositories in turn), or
// with keyOrder in the collector's: the revisions, then the layer links,
// then the blobs, each in key order (a repository's together, blobs by
// digest), which puts the removals in flight in the same directory. Each
// is removed by os.RemoveAll (what Distribution's filesystem driver does),
// or, minimal, by the two system calls that do the work: an unlink of its
// one file (link, or a blob's data) and an rmdir.
func rawOnce(b *testing.B, i int, how rawRemoval) deleteRun {
	w, paths, n := garbageWorld(b, i, false)
	if how.keyOrder {
		kind := func(p string) int {
			switch {
			case strings.Contains(p, "/_manifests/revisions/"):
				return 0
			case strings.Contains(p, "/_layers/"):
				return 1
			}
			return 2
		}
		slices.SortFunc(paths, func(a, b string) int { return cmp.Or(cmp.Compare(kind(a), kind(b)), strings.Compare(a, b)) })
	}
	remove := os.RemoveAll
	if how.minimal {
		remove = func(dir string) error {
			file := "link"
			if strings.Contains(dir, "/blobs/") {
				file = "data"
			}
			if err := syscall.Unlink(filepath.Join(dir, file)); err != nil {
				return err
			}
			return syscall.Rmdir(dir)
		}
	}
	var journal *os.File
	if how.commits != noCommits {
		var err error
		if journal, err = os.Create(filepath.Join(filepath.Dir(w.root), "commits")); err != nil {
			b.Fatal(err)
		}
		defer journal.Close()
		if err := journal.Truncate(256 * 4096); err != nil {
			b.Fatal(err)
		}
	}
	r := timed(b, func() {
		ch := make(chan string)
		// tick gets a value each time another commitRound removals are done.
		tick := make(chan struct{}, len(paths)/commitRound+1)
		var wg sync.WaitGroup
		var removed atomic.Int64
		for range 8 {
			wg.Go(func() {
				for p := range ch {
					if err := remove(p); err != nil {
						b.Error(err)
					}
					if removed.Add(1)%commitRound == 0 {
						tick <- struct{}{}
					}
				}
			})
		}
		var seq int64
		var beside sync.WaitGroup
		if how.commits == commitsBeside {
			beside.Go(func() {
				for range tick {
					syncedWrites(b, journal, &seq, commitsPerRound)
				}
			})
		}
		for i, p := range paths {
			if how.commits == commitsBetween && i > 0 && i%commitRound == 0 {
				<-tick // the round's removals are done
				syncedWrites(b, journal, &seq, commitsPerRound)
			}
			ch <- p
		}
		close(ch)
		wg.Wait()
		close(tick)
		beside.Wait()
		if how.syncfs {
			f, err := os.Open(w.root)
			if err != nil {
				b.Fatal(err)
			}
			err = unix.Syncfs(int(f.Fd()))
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	r.objects, r.bytes = int64(len(paths)), n
	return r
}
