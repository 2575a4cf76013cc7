package collector_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/s3test"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

var (
	s3BenchManifests = flag.String("s3bench.manifests", "2000,20000", "comma-separated bucket sizes (manifests) of BenchmarkS3Requests")
	s3BenchBaseline  = flag.Bool("s3bench.markandsweep", true, "BenchmarkS3Requests also counts MarkAndSweep (most of its time)")
	s3BenchUntagged  = flag.Bool("s3bench.untagged", true, "MarkAndSweep removes untagged manifests (--delete-untagged: what collects a deleted tag's manifest; it reads every tag of a repository per manifest)")
)

// s3Bucket fills an S3 server, without counting requests, with a registry
// of 100 repositories holding n/100 tagged OCI image manifests each: every
// manifest has its own config and layer and one of 8 layers shared within
// its repository. It returns the first repository's name.
func s3Bucket(b *testing.B, srv *s3test.Server, n int) string {
	b.Helper()
	const repos, shared = 100, 8
	if n/repos <= shared {
		b.Fatalf("%d manifests: need more than %d, so that every shared layer stays shared", n, repos*shared)
	}
	put := func(key string, content []byte) {
		if err := srv.Put("docker/registry/v2/"+key, content); err != nil {
			b.Fatal(err)
		}
	}
	blob := func(content []byte) events.Descriptor {
		d := digest.FromBytes(content)
		put("blobs/sha256/"+d.Encoded()[:2]+"/"+d.Encoded()+"/data", content)
		return events.Descriptor{MediaType: mtLayer, Digest: d, Size: int64(len(content))}
	}
	link := func(key string, d digest.Digest) { put(key+"/sha256/"+d.Encoded()+"/link", []byte(d)) }
	for r := range repos {
		repo := fmt.Sprintf("repositories/org%d/app%d", r%10, r)
		var common []events.Descriptor
		for s := range shared {
			common = append(common, blob(fmt.Appendf(nil, "layer %d shared in %s", s, repo)))
		}
		for i := range n / repos {
			conf := blob(fmt.Appendf(nil, `{"architecture":"arm64","os":"linux","build":"%s/%d"}`, repo, i))
			conf.MediaType = mtConf
			layers := []events.Descriptor{common[i%shared], blob(fmt.Appendf(nil, "layer %d of %s", i, repo))}
			raw, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtImage, "config": conf, "layers": layers})
			if err != nil {
				b.Fatal(err)
			}
			m := blob(raw)
			link(repo+"/_manifests/revisions", m.Digest)
			for _, l := range append(layers, conf) {
				link(repo+"/_layers", l.Digest)
			}
			tag := repo + "/_manifests/tags/" + strconv.Itoa(i)
			link(tag+"/index", m.Digest)
			put(tag+"/current/link", []byte(m.Digest))
		}
	}
	return "org0/app0"
}

// BenchmarkS3Requests counts the S3 requests (list, head, get, put,
// delete) that (a) collecting one deleted tag and (b) one reconcile pass
// cost refgc, against Distribution's MarkAndSweep over the same bucket:
// (a) one pass that removes untagged manifests, as `registry
// garbage-collect --delete-untagged` does (with -s3bench.untagged=false,
// the default pass, which is cheaper and would not collect the tag's
// manifest), and (b) its dry run. The counts are exact and do not vary
// between runs; run with -benchtime 1x.
func BenchmarkS3Requests(b *testing.B) {
	for _, s := range strings.Split(*s3BenchManifests, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("manifests=%d", n), func(b *testing.B) {
			for b.Loop() {
				benchS3Requests(b, n)
			}
		})
	}
}

func reportCounts(b *testing.B, what string, c s3test.Counts, start time.Time) {
	b.Helper()
	for v := s3test.List; v <= s3test.Delete; v++ {
		b.ReportMetric(float64(c[v]), what+"-"+v.String())
	}
	b.ReportMetric(float64(c.Total()), what+"-total")
	b.Logf("%s: %v (%s)", what, c, time.Since(start).Round(time.Millisecond))
}

func benchS3Requests(b *testing.B, n int) {
	ctx := context.Background()
	start := time.Now()
	srv := s3test.Start(b, s3test.Options{})
	repo := s3Bucket(b, srv, n)
	b.Logf("bucket of %d manifests in %s", n, time.Since(start).Round(time.Millisecond))
	st, err := store.New(ctx, "s3", srv.Params(""))
	if err != nil {
		b.Fatal(err)
	}
	clock := time.Now().UTC()
	now := func() time.Time { return clock }
	proj, err := refcount.Open(filepath.Join(b.TempDir(), "refs.db"),
		refcount.Options{Grace: testGrace, Retention: testRetention, NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer proj.Close()
	log := &collector.DirectLog{P: proj}
	rec, err := reconcile.New(reconcile.Config{Projection: proj, Store: st, Log: log, Now: now, Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	col, err := collector.New(collector.Config{Projection: proj, Storage: st, Log: log, Now: now, Logger: quietLogger,
		Reconcile: func(ctx context.Context, repos []string) error { _, err := rec.ReconcileRepos(ctx, repos); return err }})
	if err != nil {
		b.Fatal(err)
	}
	measure := func(fn func()) s3test.Counts {
		before := srv.Counts()
		fn()
		return srv.Counts().Sub(before)
	}
	if d, err := rec.Reconcile(ctx, true); err != nil || d.Published == 0 {
		b.Fatalf("fill: %v %v", d, err)
	}
	clock = clock.Add(2 * testRetention)

	// (b) One reconcile pass over a bucket that matches the projection.
	start = time.Now()
	reportCounts(b, "reconcile", measure(func() {
		d, err := rec.Reconcile(ctx, true)
		if err != nil || !d.Clean() || d.Scanned["revisions"] != n {
			b.Fatalf("reconcile: %+v %v", d, err)
		}
	}), start)

	// (a) The registry deletes one tag (its directory goes) and notifies.
	tagDir := "/docker/registry/v2/repositories/" + repo + "/_manifests/tags/0"
	cur, err := st.StorageDriver().GetContent(ctx, tagDir+"/current/link")
	if err != nil {
		b.Fatal(err)
	}
	if err := st.StorageDriver().Delete(ctx, tagDir); err != nil {
		b.Fatal(err)
	}
	clock = clock.Add(time.Second)
	if err := log.Publish(ctx, []events.Event{{V: events.Version, ID: "bench-tag-delete", Time: clock, Source: "bench",
		Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: "0"}}}); err != nil {
		b.Fatal(err)
	}
	var total collector.Report
	start = time.Now()
	reportCounts(b, "collect", measure(func() {
		for range 3 {
			clock = clock.Add(testGrace + testRetention)
			rep, err := col.Pass(ctx)
			if err != nil || rep.Errors > 0 || rep.Refused > 0 {
				b.Fatalf("pass: %+v %v", rep, err)
			}
			total.Unlinked += rep.Unlinked
			total.Purged += rep.Purged
		}
	}), start)
	// The revision, its config's and own layer's links; their three blobs.
	if total.Unlinked != 3 || total.Purged != 3 {
		b.Fatalf("collected %d unlinked, %d purged, want 3 and 3", total.Unlinked, total.Purged)
	}
	if _, err := st.StatBlob(ctx, digest.Digest(cur)); err == nil {
		b.Fatal("the deleted tag's manifest is still stored")
	}

	if !*s3BenchBaseline {
		return
	}
	// Distribution's mark and sweep over a bucket in the same state.
	ms := s3test.Start(b, s3test.Options{})
	s3Bucket(b, ms, n)
	drv, err := factory.Create(ctx, "s3", ms.Params(""))
	if err != nil {
		b.Fatal(err)
	}
	if err := drv.Delete(ctx, tagDir); err != nil {
		b.Fatal(err)
	}
	reg, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	untagged := *s3BenchUntagged
	reportCounts(b, "markandsweep-dryrun", measure2(ms, func() {
		if err := storage.MarkAndSweep(ctx, drv, reg, storage.GCOpts{DryRun: true, RemoveUntagged: untagged, Quiet: true}); err != nil {
			b.Fatal(err)
		}
	}), start)
	start = time.Now()
	reportCounts(b, "markandsweep", measure2(ms, func() {
		if err := storage.MarkAndSweep(ctx, drv, reg, storage.GCOpts{RemoveUntagged: untagged, Quiet: true}); err != nil {
			b.Fatal(err)
		}
	}), start)
	if !untagged {
		return // the deleted tag's manifest is still a revision: it stays
	}
	if _, err := drv.Stat(ctx, "/docker/registry/v2/blobs/sha256/"+digest.Digest(cur).Encoded()[:2]+"/"+digest.Digest(cur).Encoded()+"/data"); err == nil {
		b.Fatal("MarkAndSweep left the deleted tag's manifest")
	}
}

func measure2(srv *s3test.Server, fn func()) s3test.Counts {
	before := srv.Counts()
	fn()
	return srv.Counts().Sub(before)
}
