package daemon_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// partitions is a registry collected by two repository partitions and two
// digest partitions sharing one event log and one storage, on one clock.
type partitions struct {
	t     *testing.T
	names []string
	parts map[string]*daemon.Daemon
	reg   *regtest.Registry
	clock *regtest.Clock
	root  string
	marks int
	mark  v1.Image
}

func newPartitions(t *testing.T) *partitions {
	emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	x := &partitions{t: t, names: []string{"r0", "r1", "d0", "d1"}, parts: map[string]*daemon.Daemon{},
		clock: &regtest.Clock{}, root: t.TempDir()}
	for _, name := range x.names {
		x.parts[name] = startShared(t, emb, x.root, func(cfg *daemon.Config) {
			cfg.Webhook.Token = testToken
			cfg.Collector.Grace, cfg.Collector.Retention = testGrace, testRetention
			cfg.Collector.Concurrency = 4
			cfg.Partition = daemon.PartitionConfig{Name: name, Repos: 2, Digests: 2}
			cfg.Now = x.clock.Now
		})
	}
	// Any instance takes the registry's notifications: here a digest
	// partition's.
	x.reg = regtest.StartFromConfigFile(t, registryYML, regtest.Options{Root: x.root,
		NotifyURL: x.parts["d1"].WebhookURL(), NotifyToken: testToken})
	x.reg.Faults.ShiftTime(x.clock.Offset)
	x.mark = regtest.RandomImage(t, 1)
	x.settle()
	return x
}

// repos names n repositories in each repository partition.
func (x *partitions) repos(n int) []string {
	var repos []string
	for i, have := 0, [2]int{}; len(repos) < 2*n; i++ {
		name := fmt.Sprintf("team%d/app", i)
		if p := refcount.RepoPartition(name, 2); have[p] < n {
			have[p]++
			repos = append(repos, name)
		}
	}
	return repos
}

// settle waits until every partition has applied every notification sent
// so far: the marker tag reaches its repository partition after them, and
// each partition then catches up with the log.
func (x *partitions) settle() {
	x.t.Helper()
	x.marks++
	tag := fmt.Sprintf("m%d", x.marks)
	x.reg.Push(x.t, "marker:"+tag, x.mark)
	owner := x.parts[fmt.Sprintf("r%d", refcount.RepoPartition("marker", 2))]
	ref := events.NodeRef{Kind: events.NodeTag, Repo: "marker", Name: tag}
	regtest.WaitFor(x.t, "marker "+tag, func() bool {
		_, ok, err := owner.Projection().Get(ref)
		return err == nil && ok
	})
	for _, name := range x.names {
		if _, err := x.parts[name].Follower().CatchUp(context.Background()); err != nil {
			x.t.Fatal(err)
		}
	}
}

// pass runs a collector pass in every partition.
func (x *partitions) pass() {
	x.t.Helper()
	for _, name := range x.names {
		rep, err := x.parts[name].Collect(context.Background(), false)
		if err != nil {
			x.t.Fatalf("%s: %v", name, err)
		}
		if rep.Errors > 0 {
			x.t.Fatalf("%s: %d errors", name, rep.Errors)
		}
	}
}

// reconcile runs a whole reconcile in every partition, repository
// partitions first.
func (x *partitions) reconcile() {
	x.t.Helper()
	for _, name := range x.names {
		if _, err := x.parts[name].Reconcile(context.Background(), true); err != nil {
			x.t.Fatalf("%s: reconcile: %v", name, err)
		}
	}
}

// collectAndVerify drains (passes while the clock moves past grace and
// retention) between the oracle's reachable set and what storage then
// holds, and checks every projection.
func (x *partitions) collectAndVerify() {
	x.t.Helper()
	regtest.CollectAndVerify(x.t, x.root, false, nil, x.settle, func() {
		regtest.Drain(x.t, testGrace, testRetention, x.clock.Advance, x.pass)
	}, func() ([]refcount.Mismatch, error) {
		var all []refcount.Mismatch
		for _, name := range x.names {
			ms, err := x.parts[name].Projection().Check()
			if err != nil {
				return nil, err
			}
			all = append(all, ms...)
		}
		return all, nil
	})
}

// purges sums the blob purges of the named partitions.
func (x *partitions) purges(names ...string) float64 {
	var n float64
	for _, name := range names {
		n += metricWith(x.t, x.parts[name], "refgc_collector_deletions_total", "op", "purge")
	}
	return n
}

// A registry collected by two repository partitions and two digest
// partitions sharing one event log, with its notifications duplicated,
// held back and released out of order, refused for a while and one of
// them lost: every tag still pulls, and all garbage goes.
func TestPartitionedDeployment(t *testing.T) {
	x := newPartitions(t)
	reg := x.reg
	rng := rand.New(rand.NewPCG(14, 2))
	reg.Faults.DuplicateFraction(0.2, rng)
	repos := x.repos(2)

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
	x.settle()

	for _, repo := range repos {
		reg.DeleteTag(t, repo, "tmp")
	}
	reg.DeleteTag(t, repos[0], "base") // mounted elsewhere: the layers stay
	reg.DeleteTag(t, repos[1], "v1")

	x.collectAndVerify()
	for i, repo := range repos {
		for _, tag := range []string{"v1", "mounted", "late", "retried", "lossy"} {
			if (i == 0 && tag == "mounted") || (i == 1 && tag == "v1") || (tag == "late" && i != 1) ||
				(tag == "retried" && i != 2) || (tag == "lossy" && i != 3) {
				continue
			}
			reg.MustPull(t, repo+":"+tag)
		}
	}
	if n := metricSum(t, x.parts["r0"], "refgc_partition_statements_published_total") +
		metricSum(t, x.parts["r1"], "refgc_partition_statements_published_total"); n == 0 {
		t.Fatal("no statements published")
	}
	if n := x.purges("r0", "r1"); n != 0 {
		t.Fatalf("repository partitions purged %v blobs", n)
	}
	if x.purges("d0", "d1") == 0 {
		t.Fatal("the digest partitions purged nothing")
	}
}

var partitionOps = flag.Int("daemon.partition-ops", 40, "operations in TestPartitionedRandom")

// A random history of pushes sharing layers across repositories of both
// repository partitions, mounts, tag moves and deletions, with collector
// passes and reconciles of every partition between them while the clock
// moves, and notifications duplicated, lost, held back and refused: no
// acknowledged tag stops pulling, and all garbage goes.
func TestPartitionedRandom(t *testing.T) {
	x := newPartitions(t)
	reg := x.reg
	rng := rand.New(rand.NewPCG(uint64(*partitionOps), 7))
	// The relay draws from its own generators, in its own goroutine.
	reg.Faults.DuplicateFraction(0.1, rand.New(rand.NewPCG(rng.Uint64(), 1)))
	// Lost: any notification but the markers' (settle waits for those).
	reg.Faults.Where(func(n regtest.Notification) bool { return n.Repository != "marker" }).
		DropFraction(0.03, rand.New(rand.NewPCG(rng.Uint64(), 2)))
	repos := x.repos(3)
	bases := []v1.Image{regtest.RandomImage(t, 2), regtest.RandomImage(t, 3)}
	tags := map[string]bool{} // repo:tag the registry acknowledged and nobody deleted
	for op := 0; op < *partitionOps; op++ {
		repo := repos[rng.IntN(len(repos))]
		ref := fmt.Sprintf("%s:t%d", repo, rng.IntN(4))
		switch r := rng.IntN(100); {
		case r < 40:
			reg.Push(t, ref, regtest.SharingImage(t, bases[rng.IntN(len(bases))], 1+rng.IntN(2), rng.IntN(2)))
			tags[ref] = true
		case r < 50:
			var from []string
			for tg := range tags {
				from = append(from, tg)
			}
			if len(from) > 0 {
				slices.Sort(from)
				reg.Mount(t, from[rng.IntN(len(from))], ref)
				tags[ref] = true
			}
		case r < 70:
			if tags[ref] {
				name, tag, _ := strings.Cut(ref, ":")
				reg.DeleteTag(t, name, tag)
				delete(tags, ref)
			}
		case r < 78:
			reg.Faults.Hold()
			reg.PushRandom(t, ref, 1)
			tags[ref] = true
			reg.Faults.Release()
		case r < 82:
			reg.Faults.Refuse(503)
			reg.PushRandom(t, ref, 1)
			tags[ref] = true
			reg.Faults.Accept()
		case r < 92:
			x.settle()
			x.clock.Advance(time.Duration(rng.IntN(4)) * testGrace)
			x.pass()
		default:
			x.settle()
			x.reconcile()
		}
	}
	reg.Faults.Clear()
	x.settle()
	x.reconcile() // what lost notifications hid
	x.collectAndVerify()
	for ref := range tags {
		reg.MustPull(t, ref)
	}
	t.Logf("faults %+v; purged %v", reg.Faults.Stats(), x.purges("d0", "d1"))
}
