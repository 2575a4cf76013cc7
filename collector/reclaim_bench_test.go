package collector_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

var reclaimSizes = flag.String("reclaim.manifests", "2000,20000",
	"registry sizes (manifests, 100 per repository) of BenchmarkReclaimOne, comma-separated")

// BenchmarkReclaimOne measures the cost of reclaiming one deleted tag: a
// registry of N manifests in Distribution's layout (100 a repository, each
// with its own config and layer, one of 8 layers shared in the repository,
// every manifest tagged) is filled into a projection by a reconcile pass,
// then settles (a collector pass finds nothing); one tag is deleted in
// storage and its TagDeleted event applied, and the collector runs passes
// on a clock moved past the grace and the retention until the revision,
// its config and its own layer are gone from the disk. Against it, in the
// same run and on the same storage (tag already deleted): one pass of
// Distribution's MarkAndSweep (dry run, RemoveUntagged), which must walk
// the whole registry to find the same garbage.
//
// Reported per size: storage operations (calls reaching the driver,
// walks counted by what they list and stat) and process CPU time, for
// refgc (the event's Apply and the passes) and for MarkAndSweep, and their
// ratios. Sizes with -reclaim.manifests (default 2,000 and 20,000).
func BenchmarkReclaimOne(b *testing.B) {
	for _, f := range strings.Split(*reclaimSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 100 {
			b.Fatalf("-reclaim.manifests: %q", f)
		}
		b.Run(fmt.Sprintf("manifests=%d", n), func(b *testing.B) {
			for b.Loop() {
				reclaimOne(b, n)
			}
		})
	}
}

func reclaimOne(b *testing.B, n int) {
	b.StopTimer()
	defer b.StartTimer()
	ctx := context.Background()
	root := b.TempDir()
	benchLayout(b, root, n/100, n, 1)
	fsd, err := store.New(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		b.Fatal(err)
	}
	drv := &regtest.CountingDriver{StorageDriver: fsd.StorageDriver()}
	st := store.FromDriver(drv)
	const grace, retention = time.Hour, 3 * time.Hour
	proj, err := refcount.Open(filepath.Join(b.TempDir(), "refs.db"),
		refcount.Options{Grace: grace, Retention: retention}) // fsync on, as deployed
	if err != nil {
		b.Fatal(err)
	}
	defer proj.Close()
	clock := time.Now()
	now := func() time.Time { return clock }
	log := &collector.DirectLog{P: proj}
	rec, err := reconcile.New(reconcile.Config{Projection: proj, Store: st, Log: log, Now: now, Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	if d, err := rec.Reconcile(ctx, true); err != nil || d.Published == 0 {
		b.Fatalf("fill: %v %v", d, err)
	}
	col, err := collector.New(collector.Config{Projection: proj, Storage: st, Log: log, Now: now,
		Started: clock.Add(-24 * time.Hour), Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	clock = clock.Add(retention + grace)
	if rep, err := col.Pass(ctx); err != nil || rep.Unlinked+rep.Purged > 0 {
		b.Fatalf("settling pass: %+v %v", rep, err)
	}

	// The change: tag v0 of the first repository deleted, as the registry does.
	repo := "team0/app0"
	repoDir := filepath.Join(root, "docker/registry/v2/repositories", repo)
	cur, err := os.ReadFile(filepath.Join(repoDir, "_manifests/tags/v0/current/link"))
	if err != nil {
		b.Fatal(err)
	}
	man := digest.Digest(cur)
	if err := os.RemoveAll(filepath.Join(repoDir, "_manifests/tags/v0")); err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "docker/registry/v2/blobs/sha256", man.Encoded()[:2], man.Encoded(), "data"))
	if err != nil {
		b.Fatal(err)
	}
	parsed, err := events.ParseManifest("", raw)
	if err != nil {
		b.Fatal(err)
	}
	// What must go: the revision, its config and its own layer (the
	// second of its layers; the first is shared).
	own := []digest.Digest{man, parsed.Blobs[0].Digest, parsed.Blobs[len(parsed.Blobs)-1].Digest}
	gone := func() bool {
		for _, d := range own {
			if _, err := os.Stat(filepath.Join(root, "docker/registry/v2/blobs/sha256", d.Encoded()[:2], d.Encoded())); err == nil {
				return false
			}
		}
		return true
	}

	// Baseline first, on the storage as it stands after the delete.
	ops0, cpu0 := drv.Ops.Load(), regtest.CPUTime(b)
	reg, err := storage.NewRegistry(ctx, drv)
	if err != nil {
		b.Fatal(err)
	}
	if err := storage.MarkAndSweep(ctx, drv, reg, storage.GCOpts{DryRun: true, RemoveUntagged: true, Quiet: true}); err != nil {
		b.Fatal(err)
	}
	msOps, msCPU := drv.Ops.Load()-ops0, regtest.CPUTime(b)-cpu0

	b.StartTimer()
	ops0, cpu0 = drv.Ops.Load(), regtest.CPUTime(b)
	clock = clock.Add(time.Minute)
	if err := log.Publish(ctx, []events.Event{{ID: "reclaim-tag-delete", Kind: events.TagDeleted, Time: clock,
		Tag: &events.Tag{Repo: repo, Name: "v0"}}}); err != nil {
		b.Fatal(err)
	}
	passes := 0
	for ; !gone() && passes < 10; passes++ {
		clock = clock.Add(retention + grace)
		if rep, err := col.Pass(ctx); err != nil || rep.Errors > 0 {
			b.Fatalf("pass: %+v %v", rep, err)
		}
	}
	gcOps, gcCPU := drv.Ops.Load()-ops0, regtest.CPUTime(b)-cpu0
	b.StopTimer()
	if !gone() {
		b.Fatalf("the deleted image's content is still on disk after %d passes", passes)
	}
	b.ReportMetric(float64(gcOps), "refgc-ops")
	b.ReportMetric(float64(msOps), "markandsweep-ops")
	b.ReportMetric(float64(msOps)/float64(max(gcOps, 1)), "ops-ratio")
	b.ReportMetric(float64(gcCPU.Microseconds())/1000, "refgc-cpu-ms")
	b.ReportMetric(float64(msCPU.Microseconds())/1000, "markandsweep-cpu-ms")
	b.ReportMetric(float64(msCPU)/float64(max(gcCPU, 1)), "cpu-ratio")
	b.ReportMetric(float64(passes), "passes")
}
