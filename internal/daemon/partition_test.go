package daemon_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// A registry collected by two repository partitions and two digest
// partitions sharing one event log, with its notifications duplicated,
// held back and released out of order, refused for a while and one of
// them lost: every tag still pulls, and all garbage goes.
func TestPartitionedDeployment(t *testing.T) {
	ctx := context.Background()
	emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	root := t.TempDir()
	var clock regtest.Clock
	names := []string{"r0", "r1", "d0", "d1"}
	parts := map[string]*daemon.Daemon{}
	for _, name := range names {
		parts[name] = startShared(t, emb, root, func(cfg *daemon.Config) {
			cfg.Webhook.Token = testToken
			cfg.Collector.Grace, cfg.Collector.Retention = testGrace, testRetention
			cfg.Collector.Concurrency = 4
			cfg.Partition = daemon.PartitionConfig{Name: name, Repos: 2, Digests: 2}
			cfg.Now = clock.Now
		})
	}
	// Any instance takes the registry's notifications: here a digest
	// partition's.
	reg := regtest.StartFromConfigFile(t, registryYML, regtest.Options{Root: root,
		NotifyURL: parts["d1"].WebhookURL(), NotifyToken: testToken})
	reg.Faults.ShiftTime(clock.Offset)
	rng := rand.New(rand.NewPCG(14, 2))
	reg.Faults.DuplicateFraction(0.2, rng)

	// Two repositories in each repository partition.
	var repos []string
	for i, n := 0, [2]int{}; len(repos) < 4; i++ {
		name := fmt.Sprintf("team%d/app", i)
		if p := refcount.RepoPartition(name, 2); n[p] < 2 {
			n[p]++
			repos = append(repos, name)
		}
	}
	marker := regtest.RandomImage(t, 1)
	marks := 0
	// settle waits until every partition has applied every notification
	// sent so far: the marker tag reaches its repository partition last,
	// and each partition then catches up with the log.
	settle := func() {
		t.Helper()
		marks++
		tag := fmt.Sprintf("m%d", marks)
		reg.Push(t, "marker:"+tag, marker)
		owner := parts[fmt.Sprintf("r%d", refcount.RepoPartition("marker", 2))]
		ref := events.NodeRef{Kind: events.NodeTag, Repo: "marker", Name: tag}
		regtest.WaitFor(t, "marker "+tag, func() bool {
			_, ok, err := owner.Projection().Get(ref)
			return err == nil && ok
		})
		for _, name := range names {
			if _, err := parts[name].Follower().CatchUp(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	settle()

	// Images sharing a base across every repository, and so across both
	// repository partitions and both digest partitions.
	base := regtest.RandomImage(t, 3)
	for i, repo := range repos {
		reg.Push(t, repo+":base", base)
		reg.Push(t, repo+":v1", regtest.SharingImage(t, base, 2, 1))
		reg.PushRandom(t, repo+":tmp", 2)
		if i > 0 {
			reg.Mount(t, repos[0]+":base", repo+":mounted")
		}
	}
	// Held back, then released after what follows: out of order.
	reg.Faults.Hold()
	reg.Push(t, repos[1]+":late", regtest.SharingImage(t, base, 3, 2))
	reg.Faults.Release()
	// Refused for a while: the registry retries, refgc stores them once.
	reg.Faults.Refuse(503)
	reg.PushRandom(t, repos[2]+":retried", 1)
	reg.Faults.Accept()
	// One notification lost: the pushed image's layers and manifest are
	// stated anyway by the manifest's notification, which names them.
	reg.Faults.Where(regtest.BlobPush(repos[3])).Drop(1)
	reg.PushRandom(t, repos[3]+":lossy", 2)
	settle()

	for _, repo := range repos {
		reg.DeleteTag(t, repo, "tmp")
	}
	reg.DeleteTag(t, repos[0], "base") // mounted elsewhere: the layers stay
	reg.DeleteTag(t, repos[1], "v1")

	pass := func() {
		t.Helper()
		for _, name := range names {
			rep, err := parts[name].Collect(ctx, false)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if rep.Errors > 0 {
				t.Fatalf("%s: %d errors", name, rep.Errors)
			}
		}
	}
	regtest.CollectAndVerify(t, root, false, nil, settle, func() {
		regtest.Drain(t, testGrace, testRetention, clock.Advance, pass)
	}, func() ([]refcount.Mismatch, error) {
		var all []refcount.Mismatch
		for _, name := range names {
			ms, err := parts[name].Projection().Check()
			if err != nil {
				return nil, err
			}
			all = append(all, ms...)
		}
		return all, nil
	})
	for i, repo := range repos {
		for _, tag := range []string{"v1", "mounted", "late", "retried", "lossy"} {
			if (i == 0 && tag == "mounted") || (i == 1 && tag == "v1") || (tag == "late" && i != 1) ||
				(tag == "retried" && i != 2) || (tag == "lossy" && i != 3) {
				continue
			}
			reg.MustPull(t, repo+":"+tag)
		}
	}
	if n := metricSum(t, parts["r0"], "refgc_partition_statements_published_total") +
		metricSum(t, parts["r1"], "refgc_partition_statements_published_total"); n == 0 {
		t.Fatal("no statements published")
	}
	purged := 0.0
	for _, name := range []string{"d0", "d1"} {
		purged += metricWith(t, parts[name], "refgc_collector_deletions_total", "op", "purge")
	}
	for _, name := range []string{"r0", "r1"} {
		if n := metricWith(t, parts[name], "refgc_collector_deletions_total", "op", "purge"); n != 0 {
			t.Fatalf("repository partition %s purged %v blobs", name, n)
		}
	}
	if purged == 0 {
		t.Fatal("the digest partitions purged nothing")
	}
}
