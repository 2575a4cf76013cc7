package collector

// # Intents another instance can read
//
// The collector records an intent in its projection before every storage
// operation, in the transaction of the re-check; a crash leaves it for the
// next pass to finish or undo. Under --ha the next pass may run on another
// instance, whose projection never saw that intent: an object the old
// leader unlinked and then saw referenced again would stay unlinked. So an
// IntentStore keeps a copy of every intent where every instance reads it
// (a JetStream key-value bucket), written before the storage operation and
// dropped with the local one; recover reads both.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// IntentStore keeps the collector's intents where the next active
// collector finds them. Every method is idempotent.
type IntentStore interface {
	PutIntents(ctx context.Context, ins []refcount.Intent) error
	DropIntents(ctx context.Context, ids []string) error
	ListIntents(ctx context.Context) ([]refcount.Intent, error)
}

// DefaultIntentBucket is the key-value bucket of KVIntents.
const DefaultIntentBucket = "REFGC_INTENTS"

// KVIntents is an IntentStore in a JetStream key-value bucket, one key per
// intent id.
type KVIntents struct {
	kv jetstream.KeyValue
}

// NewKVIntents creates (or opens) the bucket, with replicas copies of it.
func NewKVIntents(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (*KVIntents, error) {
	if bucket == "" {
		bucket = DefaultIntentBucket
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Replicas: max(replicas, 1),
		Description: "refgc collector intents: storage operations under way"})
	if err != nil {
		return nil, fmt.Errorf("collector: intent bucket %s: %w", bucket, err)
	}
	return &KVIntents{kv: kv}, nil
}

// PutIntents implements IntentStore.
func (s *KVIntents) PutIntents(ctx context.Context, ins []refcount.Intent) error {
	for _, in := range ins {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		if _, err := s.kv.Put(ctx, in.ID, b); err != nil {
			return fmt.Errorf("collector: put intent %s: %w", in.ID, err)
		}
	}
	return nil
}

// DropIntents implements IntentStore.
func (s *KVIntents) DropIntents(ctx context.Context, ids []string) error {
	for _, id := range ids {
		if err := s.kv.Purge(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("collector: drop intent %s: %w", id, err)
		}
	}
	return nil
}

// intentListTimeout bounds a listing of the bucket's keys: a watcher whose
// consumer a cluster dropped never gives its initial values.
var intentListTimeout = 30 * time.Second

// ListIntents implements IntentStore. A listing cut short is an error,
// never a shorter list: an intent it missed would be left undone. So it
// reads the bucket's watcher itself (eventlog.InitialValues), not through
// KeyValue.ListKeys, which takes a closed watcher for the list's end.
func (s *KVIntents) ListIntents(ctx context.Context) ([]refcount.Intent, error) {
	lctx, cancel := context.WithTimeout(ctx, intentListTimeout)
	defer cancel()
	w, err := s.kv.WatchAll(lctx, jetstream.IgnoreDeletes(), jetstream.MetaOnly())
	if err != nil {
		return nil, fmt.Errorf("collector: list intents: %w", err)
	}
	entries, err := eventlog.InitialValues(lctx, w.Updates())
	_ = w.Stop()
	if err != nil {
		return nil, fmt.Errorf("collector: list intents: %w", err)
	}
	var out []refcount.Intent
	for _, en := range entries {
		k := en.Key()
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("collector: get intent %s: %w", k, err)
		}
		var in refcount.Intent
		if err := json.Unmarshal(e.Value(), &in); err != nil {
			return nil, fmt.Errorf("collector: intent %s: %w", k, err)
		}
		out = append(out, in)
	}
	return out, nil
}

// allIntents returns the projection's intents and, with an IntentStore,
// those another instance left, once each.
func (c *Collector) allIntents(ctx context.Context) ([]refcount.Intent, error) {
	local, err := c.cfg.Projection.Intents()
	if err != nil || c.cfg.Intents == nil {
		return local, err
	}
	remote, err := c.cfg.Intents.ListIntents(ctx)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(local))
	for _, in := range local {
		seen[in.ID] = true
	}
	for _, in := range remote {
		if !seen[in.ID] {
			local = append(local, in)
		}
	}
	return local, nil
}

// dropIntents drops settled intents: local ones from the projection,
// shared ones from the IntentStore, each in one call.
func (c *Collector) dropIntents(ctx context.Context, local, shared []string) error {
	if err := c.cfg.Projection.DropIntents(local); err != nil {
		return err
	}
	if c.cfg.Intents != nil && len(shared) > 0 {
		return c.cfg.Intents.DropIntents(ctx, shared)
	}
	return nil
}
