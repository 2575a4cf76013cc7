package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Leadership: one refgc instance is the active collector; the others follow
// the stream into their own projections as hot standbys. The active one
// holds a key in a JetStream key-value bucket whose entries expire after
// TTL, and renews it every TTL/3 with a compare-and-set on the revision it
// wrote. When it dies or is cut off, the key expires and another instance
// creates it. Two instances can overlap for at most the time a deposed
// holder takes to notice a failed renewal (TTL/3), which is safe: every
// collector re-checks against the same log before deleting, and every
// storage operation is idempotent.

// DefaultLeaderBucket is the key-value bucket of the leadership key.
const DefaultLeaderBucket = "REFGC_LEADER"

// LeaderConfig configures a Leader.
type LeaderConfig struct {
	// Bucket and Key name the leadership key (defaults DefaultLeaderBucket
	// and "collector").
	Bucket, Key string
	// ID names this instance; it is the key's value while it leads.
	ID string
	// TTL is how long the key outlives its holder (default 15 s).
	TTL time.Duration
	// Replicas of the bucket (default 1).
	Replicas int
	Logger   *slog.Logger
}

// Leader campaigns for the leadership key and keeps it while it can.
type Leader struct {
	cfg   LeaderConfig
	kv    jetstream.KeyValue
	held  atomic.Bool
	rev   uint64
	steps atomic.Uint64
}

// NewLeader creates (or opens) the bucket.
func NewLeader(ctx context.Context, js jetstream.JetStream, cfg LeaderConfig) (*Leader, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultLeaderBucket
	}
	if cfg.Key == "" {
		cfg.Key = "collector"
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 15 * time.Second
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.ID == "" {
		return nil, errors.New("events: leader: an instance ID is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: cfg.Bucket, TTL: cfg.TTL,
		History: 1, Storage: jetstream.FileStorage, Replicas: cfg.Replicas})
	if err != nil {
		return nil, fmt.Errorf("events: leader bucket %s: %w", cfg.Bucket, err)
	}
	return &Leader{cfg: cfg, kv: kv}, nil
}

// IsLeader reports whether this instance holds the key now.
func (l *Leader) IsLeader() bool { return l.held.Load() }

// Campaigns counts the renewals and attempts made so far.
func (l *Leader) Campaigns() uint64 { return l.steps.Load() }

// Run campaigns until ctx ends, then gives the key up so that another
// instance takes over at once.
func (l *Leader) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.TTL / 3)
	defer t.Stop()
	for {
		l.step(ctx)
		select {
		case <-ctx.Done():
			if l.held.Swap(false) {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = l.kv.Delete(rctx, l.cfg.Key, jetstream.LastRevision(l.rev))
				cancel()
				l.cfg.Logger.Info("leadership given up", "id", l.cfg.ID)
			}
			return nil
		case <-t.C:
		}
	}
}

// step renews the key if held, or tries to take it.
func (l *Leader) step(ctx context.Context) {
	defer l.steps.Add(1)
	if l.held.Load() {
		rev, err := l.kv.Update(ctx, l.cfg.Key, []byte(l.cfg.ID), l.rev)
		if err == nil {
			l.rev = rev
			return
		}
		l.held.Store(false)
		l.cfg.Logger.Warn("leadership lost", "id", l.cfg.ID, "err", err)
	}
	rev, err := l.kv.Create(ctx, l.cfg.Key, []byte(l.cfg.ID))
	if err != nil {
		return // someone else leads, or the server is unreachable
	}
	l.rev = rev
	l.held.Store(true)
	l.cfg.Logger.Info("leadership taken", "id", l.cfg.ID)
}
