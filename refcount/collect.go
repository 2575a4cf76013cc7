package refcount

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// ErrNotEligible is returned by BeginCollect when the re-check finds that a
// candidate may no longer be collected: it is held, leased, gone, a root,
// or the projection is behind the stream.
var ErrNotEligible = errors.New("refcount: not eligible for collection")

// ErrBehind is returned (wrapped in ErrNotEligible) when the projection has
// not applied the stream as far as the caller required.
var ErrBehind = errors.New("refcount: projection behind the stream")

// Intent is the collector's record of a storage operation it is about to
// do. It is written in the same transaction as the re-check, so a crash
// between the operation and its commit leaves the intent to finish.
type Intent struct {
	ID   string         `json:"id"`
	Node events.NodeRef `json:"node"`
	// Purge is true for deleting blob data, false for unlinking.
	Purge bool `json:"purge,omitempty"`
	// AsOf is the cursor at the re-check.
	AsOf uint64 `json:"asOf"`
	// Tags are the tags whose history index lists the manifest.
	Tags []string `json:"tags,omitempty"`
	// Size is the node's size in bytes (blob data and manifests).
	Size    int64     `json:"size,omitempty"`
	Created time.Time `json:"created"`
	// Restore is set when the removal raced with a new reference and the
	// collector must put back what it unlinked.
	Restore bool `json:"restore,omitempty"`
	// Origin is the event source that stated the node present: the
	// collector routes the deletion to its owner, if it has one.
	Origin string `json:"origin,omitempty"`
}

// BeginCollect re-checks a candidate in a write transaction and, if it may
// still be collected at now with the projection at or past minCursor,
// records and returns an intent with the given id.
func (p *Projection) BeginCollect(id string, ref events.NodeRef, now time.Time, minCursor uint64) (Intent, error) {
	var in Intent
	err := p.db.Update(func(tx *bolt.Tx) error {
		var err error
		in, err = p.beginCollect(tx, id, ref, now, minCursor)
		return err
	})
	return in, err
}

// BeginCollectBatch is BeginCollect for many candidates in one transaction.
// It returns the intents recorded and, for each refused candidate, why.
func (p *Projection) BeginCollectBatch(ids []string, refs []events.NodeRef, now time.Time, minCursor uint64) ([]Intent, map[events.NodeRef]error, error) {
	var out []Intent
	refused := map[events.NodeRef]error{}
	err := p.db.Update(func(tx *bolt.Tx) error {
		out, refused = out[:0], map[events.NodeRef]error{}
		for i, ref := range refs {
			in, err := p.beginCollect(tx, ids[i], ref, now, minCursor)
			switch {
			case errors.Is(err, ErrNotEligible):
				refused[ref] = err
			case err != nil:
				return err
			default:
				out = append(out, in)
			}
		}
		return nil
	})
	return out, refused, err
}

func (p *Projection) beginCollect(tx *bolt.Tx, id string, ref events.NodeRef, now time.Time, minCursor uint64) (Intent, error) {
	var in Intent
	err := func() error {
		cursor := readU64(tx.Bucket(bucketMeta).Get(keyCursor))
		if cursor < minCursor {
			return fmt.Errorf("%w: %w: at %d, need %d", ErrNotEligible, ErrBehind, cursor, minCursor)
		}
		k := nodeKey(ref)
		v := tx.Bucket(bucketNodes).Get(k)
		if v == nil {
			return fmt.Errorf("%w: %s has no record", ErrNotEligible, ref)
		}
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		t := &txn{p: p, tx: tx}
		switch {
		case !n.present():
			return fmt.Errorf("%w: %s is not present", ErrNotEligible, ref)
		case n.count > 0:
			return fmt.Errorf("%w: %s is held (%d)", ErrNotEligible, ref, n.count)
		case t.isRoot(k, n):
			return fmt.Errorf("%w: %s is a root", ErrNotEligible, ref)
		case n.queuedAt == 0 || n.queuedAt > now.UnixNano():
			return fmt.Errorf("%w: %s not eligible until %s", ErrNotEligible, ref, time.Unix(0, n.queuedAt).UTC())
		}
		in = Intent{ID: id, Node: ref, Purge: ref.Kind == events.NodeBlob, AsOf: cursor,
			Size: n.size, Created: now.UTC(), Origin: newOriginNames(tx).name(n.origin)}
		if ref.Kind == events.NodeManifest {
			tags, err := historyTags(tx, k)
			if err != nil {
				return err
			}
			in.Tags = tags
		}
		return putIntent(tx, in)
	}()
	return in, err
}

func historyTags(tx *bolt.Tx, mk []byte) ([]string, error) {
	var tags []string
	err := forSub(tx.Bucket(bucketNodes).Cursor(), mk, subHistory, func(tk, _ []byte) error {
		ref, err := parseNodeKey(tk)
		if err != nil {
			return err
		}
		tags = append(tags, ref.Name)
		return nil
	})
	return tags, err
}

func putIntent(tx *bolt.Tx, in Intent) error {
	raw, err := json.Marshal(in)
	if err != nil {
		return err
	}
	b := tx.Bucket(bucketIntents)
	if b.Get([]byte(in.ID)) == nil {
		if err := addCounts(tx, counts{intents: 1}); err != nil {
			return err
		}
	}
	return b.Put([]byte(in.ID), raw)
}

// Intents returns the recorded intents, in id order.
func (p *Projection) Intents() ([]Intent, error) { return listJSON[Intent](p, bucketIntents, "intent") }

// IntentsLeft reports which of ids are recorded intents, in one read
// transaction: after their Collected events are applied, the intents of
// the removals the apply refused (it drops the others).
func (p *Projection) IntentsLeft(ids []string) (map[string]bool, error) {
	left := map[string]bool{}
	err := p.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIntents)
		for _, id := range ids {
			if b.Get([]byte(id)) != nil {
				left[id] = true
			}
		}
		return nil
	})
	return left, err
}

// Raced reports whether the removal an intent records raced with the
// node's use since its re-check, in one read transaction: what the apply
// of its Collected event would find. The collector asks
// just before each storage operation, so that what the projection has
// applied since the re-check stops the removal, not only undoes it. A
// node without a record is gone: raced.
func (p *Projection) Raced(in Intent) (raced bool, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get(nodeKey(in.Node))
		if v == nil {
			raced = true
			return nil
		}
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		raced = n.racedSince(in.AsOf)
		return nil
	})
	return raced, err
}

// DropIntents removes intents in one transaction.
func (p *Projection) DropIntents(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	return p.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIntents)
		var d counts
		for _, id := range ids {
			if b.Get([]byte(id)) == nil {
				continue
			}
			d.intents--
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return addCounts(tx, d)
	})
}

// Trash returns the unlinked, restorable manifest revisions, oldest first.
func (p *Projection) Trash() ([]TrashEntry, error) {
	return listJSON[TrashEntry](p, bucketTrash, "trash")
}

// TrashEntryOf returns the trash entry of a manifest revision, if any.
func (p *Projection) TrashEntryOf(ref events.NodeRef) (e TrashEntry, ok bool, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketTrash).Get(nodeKey(ref))
		if raw == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(raw, &e)
	})
	return e, ok, err
}

// PruneTrash forgets trash entries and layer-link tombstones unlinked
// before the given time: their data is past retention and may be purged,
// so a late event can no longer heal them.
func (p *Projection) PruneTrash(before time.Time) (int, error) {
	n := 0
	err := p.db.Update(func(tx *bolt.Tx) error {
		n = 0
		var drop [][]byte
		trash := tx.Bucket(bucketTrash)
		if err := trash.ForEach(func(k, v []byte) error {
			var e TrashEntry
			if err := json.Unmarshal(v, &e); err != nil || e.UnlinkedAt.Before(before) {
				drop = append(drop, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range drop {
			if err := trash.Delete(k); err != nil {
				return err
			}
		}
		if err := addCounts(tx, counts{trash: -int64(len(drop))}); err != nil {
			return err
		}
		n += len(drop)
		drop = drop[:0]
		tombs := tx.Bucket(bucketTombs)
		if err := tombs.ForEach(func(k, v []byte) error {
			if int64(readU64(v)) < before.UnixNano() {
				drop = append(drop, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range drop {
			if err := tombs.Delete(k); err != nil {
				return err
			}
		}
		n += len(drop)
		return nil
	})
	return n, err
}

// Stats are counts over the whole projection.
type Stats struct {
	Cursor     uint64                    `json:"cursor"`
	Nodes      map[events.NodeKind]int   `json:"nodes"`
	Present    map[events.NodeKind]int   `json:"present"`
	Queued     map[events.NodeKind]int   `json:"queued"`
	QueuedSize map[events.NodeKind]int64 `json:"queuedBytes"`
	Intents    int                       `json:"intents"`
	Trash      int                       `json:"trash"`
}

// Stats returns the counts by kind. It reads the counts that every write
// keeps in step (meta/counts), whatever the size of the projection; only a
// file opened read-only that has none yet is counted by a scan.
func (p *Projection) Stats() (Stats, error) {
	s := Stats{Nodes: map[events.NodeKind]int{}, Present: map[events.NodeKind]int{},
		Queued: map[events.NodeKind]int{}, QueuedSize: map[events.NodeKind]int64{}}
	err := p.db.View(func(tx *bolt.Tx) error {
		s.Cursor = readU64(tx.Bucket(bucketMeta).Get(keyCursor))
		c, ok, err := readCounts(tx)
		if err != nil {
			return err
		}
		if !ok {
			if c, err = scanCounts(tx); err != nil {
				return err
			}
		}
		s.Intents, s.Trash = int(c.intents), int(c.trash)
		for b, kc := range c.kinds { // only what is not zero, as a scan would find
			kind := kindOfKey(b)
			setNonZero(s.Nodes, kind, int(kc.nodes))
			setNonZero(s.Present, kind, int(kc.present))
			setNonZero(s.Queued, kind, int(kc.queued))
			setNonZero(s.QueuedSize, kind, kc.queuedSize)
		}
		return nil
	})
	return s, err
}

// forEachNode calls fn for every node record, in key order.
func forEachNode(tx *bolt.Tx, fn func(k []byte, ref events.NodeRef, n *node) error) error {
	return forEachRecord(tx, decodeNode, fn)
}

// forEachRecord is forEachNode with the records decoded by decode.
func forEachRecord(tx *bolt.Tx, decode func([]byte) (*node, error), fn func(k []byte, ref events.NodeRef, n *node) error) error {
	return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
		if isSub(k) {
			return nil
		}
		ref, err := parseNodeKey(k)
		if err != nil {
			return err
		}
		n, err := decode(v)
		if err != nil {
			return err
		}
		return fn(k, ref, n)
	})
}

func setNonZero[V int | int64](m map[events.NodeKind]V, k events.NodeKind, v V) {
	if v != 0 {
		m[k] = v
	}
}
