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
// creates it.
//
// Two instances never both say they lead: a holder counts itself the leader
// only until validFor after it sent its last successful write (a renewal or
// the creation), a little less than TTL. The server keeps the key at least
// TTL after it stored that write, which is after it was sent, so the key
// cannot expire, and no other instance can create it, before the holder has
// stopped saying it leads, however long a renewal blocks (a server killed
// under it) and however late the holder hears that it failed. The rejected
// alternative, leading until a renewal fails, let a holder whose renewal
// hung keep leading for as long as the call took, well past the key's
// expiry. Each call is bounded by TTL/3, so the campaign keeps its pace.

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
	until atomic.Int64 // unix nanoseconds: the holder leads until then
	rev   uint64
	steps atomic.Uint64
}

// validFor is how long after sending a successful write the holder counts
// itself the leader: 9/10 of the TTL, leaving a tenth for the difference
// between the rates of this machine's clock and the server's.
func (l *Leader) validFor() time.Duration { return l.cfg.TTL / 10 * 9 }

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

// IsLeader reports whether this instance holds the key now: it wrote it
// successfully less than validFor ago.
func (l *Leader) IsLeader() bool {
	return l.held.Load() && time.Now().UnixNano() < l.until.Load()
}

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
	ctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	if l.held.Load() {
		sent := time.Now()
		rev, err := l.kv.Update(ctx, l.cfg.Key, []byte(l.cfg.ID), l.rev)
		if err == nil && time.Since(sent) < l.validFor() {
			l.rev = rev
			l.until.Store(sent.Add(l.validFor()).UnixNano())
			return
		}
		l.held.Store(false)
		l.cfg.Logger.Warn("leadership lost", "id", l.cfg.ID, "err", err)
	}
	sent := time.Now()
	rev, err := l.kv.Create(ctx, l.cfg.Key, []byte(l.cfg.ID))
	if err != nil {
		return // someone else leads, or the server is unreachable
	}
	l.rev = rev
	l.until.Store(sent.Add(l.validFor()).UnixNano())
	l.held.Store(true)
	l.cfg.Logger.Info("leadership taken", "id", l.cfg.ID)
}
