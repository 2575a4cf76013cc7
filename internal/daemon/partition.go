package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// PartitionConfig places this instance on one partition of the registry's
// graph (refcount.Partition, docs/PARTITIONING.md): a repository partition
// r<i> or a digest partition d<j>, of Repos and Digests. Every partition
// follows the one event log; each needs its own data directory, and its
// standbys (HA) elect their collector among themselves.
type PartitionConfig struct {
	// Name is "r<i>" or "d<j>"; empty runs one projection of the whole
	// registry (the default).
	Name    string `yaml:"name"`
	Repos   int    `yaml:"repos"`
	Digests int    `yaml:"digests"`
	// BarrierTimeout bounds how long a digest partition's purge round
	// waits for every repository partition to publish its statements
	// (default DefaultBarrierTimeout); past it the round purges nothing.
	BarrierTimeout time.Duration `yaml:"barrierTimeout"`
}

// DefaultBarrierTimeout is PartitionConfig.BarrierTimeout's default.
const DefaultBarrierTimeout = 30 * time.Second

// partition is the parsed Name.
func (c PartitionConfig) partition() (refcount.Partition, error) {
	p, err := refcount.ParsePartition(c.Name, c.Repos, c.Digests)
	if err != nil {
		return p, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return p, nil
}

// suffix tells apart the buckets and keys of partitions ("" without
// partitioning, "_R0", "_D1"): intents, leadership and snapshots are each
// partition's own.
func (c PartitionConfig) suffix() string {
	if c.Name == "" {
		return ""
	}
	return "_" + strings.ToUpper(c.Name) // canonical: partition() refuses another spelling
}

// newRelay creates a repository partition's relay (before the follower
// that kicks it starts); startRelay runs it.
func (d *Daemon) newRelay(ctx context.Context) (err error) {
	if d.part.Role != refcount.RoleRepos {
		return nil
	}
	d.relay, err = eventlog.NewRelay(ctx, d.js, eventlog.RelayConfig{Publisher: d.pub, Outbox: d.proj,
		Partition: d.part.Name(), Layout: d.part.Layout(), Active: d.IsLeader, Replicas: d.cfg.NATS.Replicas,
		Logger: d.log, Registerer: d.reg})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	return nil
}

// startRelay publishes a repository partition's statements until ctx ends.
func (d *Daemon) startRelay(ctx context.Context) {
	if d.relay == nil {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		_ = d.relay.Run(ctx)
	}()
}

// barrier is a digest partition's wait on the repository partitions
// before it purges (nil otherwise).
func (d *Daemon) barrier(ctx context.Context) (func(context.Context) error, error) {
	if d.part.Role != refcount.RoleDigests {
		return nil, nil
	}
	timeout := d.cfg.Partition.BarrierTimeout
	if timeout <= 0 {
		timeout = DefaultBarrierTimeout
	}
	b, err := eventlog.NewBarrier(ctx, d.js, eventlog.BarrierConfig{Repos: d.part.Repos, Layout: d.part.Layout(),
		Replicas: d.cfg.NATS.Replicas, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	return b.Wait, nil
}
