package refcount

// Reading ahead of Apply.
//
// Apply's write transaction is one goroutine, and a sixth of its time
// went to finding and decoding node records: a Seek from the root for
// each node a batch names the first time (about 1.5 per event on a
// push-heavy mix, three in four of them new, so not found). A reader does
// that on another core, ahead of Apply, in a read-only transaction of its
// own, for batches of prefetchMin events or more. Measured
// (docs/bench/limits.md): Apply 1.04–1.22× as fast at batches of 16,000,
// in ten rounds alternating with the code without it.
//
// Why that reads what Apply would: bbolt gives a read-only transaction
// begun while the write transaction is open the last committed state,
// which is the state the write transaction began from. Until its first
// flush, the write transaction changes no node record in the bucket: it
// changes nodes in its working set (txn.cache), written back by flush. So
// for a key not yet in the working set, the record in the read
// transaction is the record the write transaction would read. A record
// read ahead is used only then, only until the first flush (a purge or a
// restatement of holds flushes mid-batch: from there on Apply reads for
// itself), and sub-keys, which Apply writes as it goes, are never read
// ahead.
//
// What the reader reads is only a guess at the keys an event names
// (eventKeys): a key it misses is read by Apply as before, a key it reads
// that Apply never names is dropped. A record it found damaged fails the
// batch only if Apply names it, with the error get would give.
//
// Rejected: the same reads made by Apply itself, in key order, before the
// batch (one cursor stepping instead of a Seek per key). Measured: the
// lookups fell to a quarter, but building and sorting the keys cost what
// they saved, on the one core Apply has. Also rejected: reading through
// the write transaction from a second goroutine; bbolt does not support
// concurrent use of a transaction, and a reader of its own is what its
// MVCC is for.
//
// Deadlock: bbolt remaps its file under a lock that waits for every
// read-only transaction to end, and only a commit (or the growth of the
// file) remaps. The reader never waits for Apply, so it always ends; and
// Apply stops it and waits for it before it commits.

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// prefetchMin is the smallest batch Apply reads ahead for. Measured
// (docs/bench/limits.md, "`Apply`, fourth round"): at batches of 1,000
// the reader gains nothing and costs about a sixth more CPU per event; at
// 4,000 it breaks even or gains, at 8,000 and more it gains. (A variable:
// tests read ahead for every batch.)
var prefetchMin = 4000

// prefetchFirst makes Apply wait until the reader has read the whole
// batch: tests use it to know that what they check was read ahead.
var prefetchFirst = false

// prefetchChunk is how many records the reader hands over at a time.
const prefetchChunk = 64

// prefetcher reads the node records of a batch's events ahead of Apply.
type prefetcher struct {
	mu    sync.Mutex
	ready []*entry // read, not yet taken by Apply
	// pos is the index of the event Apply is applying: the reader skips
	// to it when it falls behind.
	pos  atomic.Int64
	stop atomic.Bool
	done chan struct{}
}

// startPrefetch begins reading the records of batch ahead of Apply, in a
// read-only transaction of db. The caller must call close before its
// write transaction commits.
func startPrefetch(db *bolt.DB, batch []events.Record, cursor uint64) (*prefetcher, error) {
	rtx, err := db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("refcount: read ahead: %w", err)
	}
	pf := &prefetcher{done: make(chan struct{})}
	go pf.run(rtx, batch, cursor)
	if prefetchFirst {
		<-pf.done
	}
	return pf, nil
}

func (pf *prefetcher) run(rtx *bolt.Tx, batch []events.Record, cursor uint64) {
	defer close(pf.done)
	defer rtx.Rollback()
	c := rtx.Bucket(bucketNodes).Cursor()
	seen := make(map[string]struct{}, len(batch))
	chunk := make([]*entry, 0, prefetchChunk)
	var keys [][]byte
	for i := 0; i < len(batch) && !pf.stop.Load(); i++ {
		if p := int(pf.pos.Load()); p > i {
			i = p // behind Apply: what it has passed, it has read
		}
		r := &batch[i]
		if r.Seq <= cursor || r.Err != nil || !r.Valid && r.Event.Validate() != nil {
			continue // Apply passes over it
		}
		keys = eventKeys(keys[:0], &r.Event)
		for _, k := range keys {
			if _, ok := seen[string(k)]; ok {
				continue
			}
			kk, v := c.Seek(k)
			e := recordEntry(string(k), v, kk != nil && bytes.Equal(kk, k))
			seen[e.key] = struct{}{}
			chunk = append(chunk, e)
		}
		if len(chunk) >= prefetchChunk {
			pf.hand(chunk)
			chunk = make([]*entry, 0, prefetchChunk)
		}
	}
	pf.hand(chunk)
}

// hand gives Apply what the reader has read.
func (pf *prefetcher) hand(chunk []*entry) {
	if len(chunk) == 0 {
		return
	}
	pf.mu.Lock()
	pf.ready = append(pf.ready, chunk...)
	pf.mu.Unlock()
}

// take moves what the reader has handed over into m.
func (pf *prefetcher) take(m map[string]*entry) {
	pf.mu.Lock()
	ready := pf.ready
	pf.ready = nil
	pf.mu.Unlock()
	for _, e := range ready {
		m[e.key] = e
	}
}

// close stops the reader and waits for its transaction to end.
func (pf *prefetcher) close() {
	pf.stop.Store(true)
	<-pf.done
}

// eventKeys appends the node keys a valid event's apply is likely to
// read: a guess, for reading ahead only.
func eventKeys(ks [][]byte, e *events.Event) [][]byte {
	switch {
	case e.Kind == events.ManifestPushed && e.Manifest != nil:
		m := e.Manifest
		ks = append(ks, manifestKey(m.Repo, m.Digest), blobKey(m.Digest))
		for _, b := range m.Blobs {
			ks = append(ks, layerKey(m.Repo, b.Digest), blobKey(b.Digest))
		}
		for _, c := range m.Children {
			ks = append(ks, manifestKey(m.Repo, c.Digest))
		}
		if m.Subject != nil {
			ks = append(ks, manifestKey(m.Repo, m.Subject.Digest))
		}
		if m.Tag != "" {
			ks = append(ks, tagKey(m.Repo, m.Tag))
		}
	case e.Tag != nil && (e.Kind == events.TagSet || e.Kind == events.TagDeleted):
		ks = append(ks, tagKey(e.Tag.Repo, e.Tag.Name))
		if e.Kind == events.TagSet {
			ks = append(ks, manifestKey(e.Tag.Repo, e.Tag.Digest))
		}
	case e.Blob != nil && (e.Kind == events.BlobPushed || e.Kind == events.BlobMounted || e.Kind == events.BlobObserved):
		if e.Blob.Repo != "" {
			ks = append(ks, layerKey(e.Blob.Repo, e.Blob.Digest))
		}
		ks = append(ks, blobKey(e.Blob.Digest))
	case e.Ref != nil && (e.Kind == events.DigestDeleted || e.Kind == events.Touched):
		ks = append(ks, manifestKey(e.Ref.Repo, e.Ref.Digest), layerKey(e.Ref.Repo, e.Ref.Digest))
		if e.Kind == events.Touched {
			ks = append(ks, blobKey(e.Ref.Digest))
		}
	}
	return ks
}
