package refcount

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Policy says what happens to manifest revisions that nothing references.
type Policy string

const (
	// PolicyDelete collects untagged, unreferenced manifests after the grace
	// (as GitLab, Harbor and Zot do). The default.
	PolicyDelete Policy = "delete"
	// PolicyKeep makes every present manifest revision a root, as
	// Distribution's collector does without --delete-untagged.
	PolicyKeep Policy = "keep"
)

// Options configure a projection.
type Options struct {
	// Untagged is the policy for unreferenced manifests (default PolicyDelete).
	// Changing it on an existing file requeues every node once.
	Untagged Policy
	// Grace is how long a push, mount or touch protects a node, and how long
	// a node stays unheld before it may be collected (DefaultGrace, 1 h).
	Grace time.Duration
	// Retention is how long blob data stays after the last reference to it
	// went, so that unlinked manifests can be restored (DefaultRetention,
	// 24 h).
	Retention time.Duration
	// TimeMachine is how long a tag removed from the registry (deleted,
	// expired or purged) stays recoverable, holding its manifest alive
	// (0, the default: it goes at once). TimeMachineRepos overrides it per
	// repository name, or per namespace with a key ending in "/".
	TimeMachine      time.Duration
	TimeMachineRepos map[string]time.Duration
	// Partition is the share of the registry this projection holds (the
	// zero value: all of it). A file keeps the partition it was made for;
	// a read-only opening takes the file's.
	Partition Partition
	// NoSync skips fsync on commit. For tests and benchmarks only.
	NoSync bool
	// ReadOnly opens the file for queries only (a second process, such as
	// `refgc dump` beside a running daemon).
	ReadOnly bool
	// Timeout bounds the wait for the file lock (default 1 s).
	Timeout time.Duration
	// Now is the clock of Open (default time.Now): switching the untagged
	// policy from keep to delete starts every untagged revision's grace
	// at that moment.
	Now func() time.Time
}

// Projection defaults.
const (
	DefaultGrace     = time.Hour
	DefaultRetention = 24 * time.Hour
)

func (o *Options) defaults() {
	if o.Untagged == "" {
		o.Untagged = PolicyDelete
	}
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Projection is the reference-count projection over one bbolt file. It is
// safe for concurrent use; bbolt serialises writers.
type Projection struct {
	db   *bolt.DB
	opts Options
	// policyAt is when the policy last became delete (unix ns; 0: always was).
	policyAt int64
}

// Open opens (creating if needed) the projection file at path, runs any
// migrations, and requeues the nodes if the untagged policy changed.
func Open(path string, opts Options) (*Projection, error) {
	opts.defaults()
	if opts.Untagged != PolicyDelete && opts.Untagged != PolicyKeep {
		return nil, fmt.Errorf("refcount: unknown untagged policy %q (want delete or keep)", opts.Untagged)
	}
	if err := opts.Partition.Validate(); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, boltOptions(opts))
	if err != nil {
		return nil, fmt.Errorf("refcount: open %s: %w", path, err)
	}
	p := &Projection{db: db, opts: opts}
	if !opts.ReadOnly {
		if err := db.Update(p.init); err != nil {
			db.Close()
			return nil, err
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			p.policyAt = int64(readU64(meta.Get(keyPolicyAt)))
		}
		if opts.ReadOnly {
			return p.readPartition(tx)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return p, nil
}

// initialMmapSize is the address space a projection file is mapped with
// from the start (on 64-bit platforms), as etcd's backend does: while the
// file is smaller, a commit that grows it does not remap it, which would
// copy every key and value the transaction holds out of the old mapping
// and wait for every open read transaction to end. A larger file is
// mapped as bbolt always does. It reserves address space, not memory.
const initialMmapSize = 1 << 30

// boltOptions are the bbolt options of a projection file.
func boltOptions(opts Options) *bolt.Options {
	o := &bolt.Options{Timeout: opts.Timeout, NoSync: opts.NoSync,
		ReadOnly: opts.ReadOnly, NoFreelistSync: true, FreelistType: bolt.FreelistMapType}
	if strconv.IntSize == 64 {
		o.InitialMmapSize = initialMmapSize
	}
	return o
}

func (p *Projection) init(tx *bolt.Tx) error {
	fresh := tx.Bucket(bucketMeta) == nil
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("refcount: create bucket %s: %w", b, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	if fresh {
		if err := meta.Put(keySchema, u64(SchemaVersion)); err != nil {
			return err
		}
	}
	version := readU64(meta.Get(keySchema))
	if version > SchemaVersion {
		return fmt.Errorf("%w: version %d, this build reads up to %d", ErrNewerSchema, version, SchemaVersion)
	}
	for _, m := range migrations {
		if m.From >= version && m.From < SchemaVersion {
			if err := m.Apply(tx); err != nil {
				return fmt.Errorf("refcount: migrate from schema %d: %w", m.From, err)
			}
		}
	}
	if err := meta.Put(keySchema, u64(SchemaVersion)); err != nil {
		return err
	}
	if err := backfillCounts(tx); err != nil {
		return fmt.Errorf("refcount: count the projection: %w", err)
	}
	if err := p.checkPartition(tx, fresh); err != nil {
		return err
	}
	if old := Policy(meta.Get(keyPolicy)); old != p.opts.Untagged {
		if err := meta.Put(keyPolicy, []byte(p.opts.Untagged)); err != nil {
			return err
		}
		if old == PolicyKeep && p.opts.Untagged == PolicyDelete {
			// Revisions kept as roots until now get the whole grace from
			// the switch on, not from when they were last touched.
			if err := meta.Put(keyPolicyAt, u64(uint64(p.opts.Now().UnixNano()))); err != nil {
				return err
			}
			p.policyAt = p.opts.Now().UnixNano()
		}
		if old != "" {
			return p.requeue(tx)
		}
	}
	return nil
}

// requeue recomputes every node's queue entry (after a policy change).
func (p *Projection) requeue(tx *bolt.Tx) error {
	if err := tx.DeleteBucket(bucketQueue); err != nil {
		return err
	}
	if _, err := tx.CreateBucket(bucketQueue); err != nil {
		return err
	}
	t := p.newTxn(tx)
	err := tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
		if isSub(k) {
			return nil
		}
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		e := &entry{key: string(k), n: n, orig: n.clone(), dirty: true}
		n.queuedAt = 0
		t.cache[e.key] = e
		t.dirty = append(t.dirty, e)
		return nil
	})
	if err != nil {
		return err
	}
	return t.flush()
}

// Close closes the file.
func (p *Projection) Close() error { return p.db.Close() }

// PageWrites returns how many pages the file's commits have written since
// Open: divided by the events applied, the storage cost of an event.
func (p *Projection) PageWrites() int64 {
	s := p.db.Stats()
	return s.TxStats.GetWrite()
}

// Path returns the file's path.
func (p *Projection) Path() string { return p.db.Path() }

// Options returns the options in force, with defaults filled in.
func (p *Projection) Options() Options { return p.opts }

// Cursor returns the last applied stream sequence (0 for a new file).
func (p *Projection) Cursor() (uint64, error) {
	var c uint64
	err := p.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			c = readU64(b.Get(keyCursor))
		}
		return nil
	})
	return c, err
}

// Invalid is an event of a batch that was not applied.
type Invalid struct {
	Seq uint64
	ID  string
	Err error
}

// Result is what Apply did with a batch.
type Result struct {
	Applied int       // events applied
	Skipped int       // events at or below the cursor
	Invalid []Invalid // events refused; the cursor still moved past them
	Cursor  uint64    // the cursor after the batch
}

// Apply applies a batch of records in one write transaction that also
// stores the last sequence. Records at or below the cursor are skipped;
// a record with Err set, or whose event does not validate (checked unless
// the record is marked Valid, as the follower's decoded records are), is reported in
// Result.Invalid and passed over. A non-nil error means nothing was
// committed.
func (p *Projection) Apply(batch []events.Record) (Result, error) {
	var res Result
	err := p.db.Update(func(tx *bolt.Tx) error {
		res = Result{}
		meta := tx.Bucket(bucketMeta)
		cursor := readU64(meta.Get(keyCursor))
		t := p.newTxn(tx)
		if len(batch) >= prefetchMin {
			pf, err := startPrefetch(p.db, batch, cursor)
			if err != nil {
				return err
			}
			defer pf.close() // flush closes it too: its transaction ends before the commit
			t.pf, t.pre = pf, make(map[string]*entry, len(batch))
		}
		for i := range batch {
			r := &batch[i]
			if t.pf != nil {
				t.pf.pos.Store(int64(i))
			}
			if r.Seq <= cursor {
				res.Skipped++
				continue
			}
			cursor = r.Seq
			if r.Err != nil {
				res.Invalid = append(res.Invalid, Invalid{Seq: r.Seq, ID: r.Event.ID, Err: r.Err})
				continue
			}
			if r.Valid {
				// Decoded and validated by the caller.
			} else if err := r.Event.Validate(); err != nil {
				res.Invalid = append(res.Invalid, Invalid{Seq: r.Seq, ID: r.Event.ID, Err: err})
				continue
			}
			if err := t.apply(r.Seq, &r.Event); err != nil {
				return fmt.Errorf("refcount: apply seq %d (%s): %w", r.Seq, r.Event.ID, err)
			}
			res.Applied++
		}
		if err := t.flush(); err != nil {
			return err
		}
		res.Cursor = cursor
		return meta.Put(keyCursor, u64(cursor))
	})
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// txn is one write transaction's working set: node records are decoded
// once, changed in memory, and written back by flush, in key order.
type txn struct {
	p     *Projection
	tx    *bolt.Tx
	nodes *bolt.Bucket
	queue *bolt.Bucket
	// nc is the transaction's cursor on nodes/, kept for lookups: a
	// bucket's Get makes a new cursor each time.
	nc    *bolt.Cursor
	cache map[string]*entry
	dirty []*entry // the changed entries, each once
	delta counts   // what the transaction changed of the counts
	// sources caches the delivery state of the batch's sources.
	sources map[string]*SourceState
	// purged caches purges/ by repository.
	purged   map[string]int64
	now      int64     // the current event's time, unix ns
	received time.Time // when the current event was received, if ingested
	evSource string    // the current event's source
	// origins caches the interned ids of the batch's sources.
	origins map[string]uint64
	seq     uint64 // the current event's sequence
	err     error
	// pf reads node records ahead (prefetch.go), pre holds what it read
	// that get has not taken; both nil after the first flush.
	pf  *prefetcher
	pre map[string]*entry
}

// entry is one node of the working set.
type entry struct {
	key string
	n   *node
	// orig is the node as its record stood when read (nil: no record).
	orig  *node
	dirty bool
	// In a repository partition, for a blob copy: whether it was held at
	// its last change, and the sequence and time of the last event that
	// changed whether it is held, or gave it a lease while unheld
	// (stateAt 0: none in this batch). flush states the copy as of that
	// event, so that what is stated does not depend on where batches end.
	held      bool
	stateAt   uint64
	stateTime int64
	// err is why the record could not be decoded (recordEntry), until
	// get reports it.
	err error
}

func (p *Projection) newTxn(tx *bolt.Tx) *txn {
	return &txn{p: p, tx: tx, nodes: tx.Bucket(bucketNodes), queue: tx.Bucket(bucketQueue),
		cache: make(map[string]*entry), sources: make(map[string]*SourceState),
		delta: newCounts(), purged: make(map[string]int64)}
}

// lookup reads key k of nodes/ through the transaction's cursor.
func (t *txn) lookup(k []byte) (v []byte, ok bool) {
	if t.nc == nil {
		t.nc = t.nodes.Cursor()
	}
	kk, v := t.nc.Seek(k)
	if kk == nil || !bytes.Equal(kk, k) {
		return nil, false
	}
	return v, true
}

// get returns the node record for k, a new empty one if there is none.
func (t *txn) get(k []byte) *node {
	if e, ok := t.cache[string(k)]; ok {
		n := e.n
		if n.alive() || n.active() {
			return n
		}
		// Dead since it was cached: flush would delete its record, so it
		// comes back as new, exactly as it would in a later batch. It is
		// reset in place, since callers may hold it; the old queue entry
		// is kept in view for flush to remove.
		*n = node{queuedAt: n.queuedAt}
		return n
	}
	e := t.readAhead(k)
	if e == nil {
		v, ok := t.lookup(k)
		e = recordEntry(string(k), v, ok)
	}
	if e.err != nil {
		t.fail(fmt.Errorf("node %q: %w", k, e.err))
		e.n, e.orig, e.err = &node{}, nil, nil
	}
	t.cache[e.key] = e
	return e.n
}

// recordEntry is the working-set entry of the node key k as its record v
// reads (found: whether there is one); a record that does not decode
// gives an entry with err set, for get to report.
func recordEntry(k string, v []byte, found bool) *entry {
	e := &entry{key: k, n: &node{}}
	if !found {
		return e
	}
	d, err := decodeNode(v)
	if err != nil {
		e.err = err
		return e
	}
	e.n, e.orig = d, d.clone()
	e.held = d.count > 0
	return e
}

// readAhead returns the entry the prefetcher read for k, if it has.
func (t *txn) readAhead(k []byte) *entry {
	if t.pre == nil {
		return nil
	}
	e, ok := t.pre[string(k)]
	if !ok {
		t.pf.take(t.pre)
		if e, ok = t.pre[string(k)]; !ok {
			return nil
		}
	}
	delete(t.pre, e.key)
	return e
}

// markDirty adds k's entry, which get has cached, to the nodes flush writes.
func (t *txn) markDirty(k []byte) {
	e := t.cache[string(k)]
	if e == nil {
		t.get(k)
		e = t.cache[string(k)]
	}
	if !e.dirty {
		e.dirty = true
		t.dirty = append(t.dirty, e)
	}
}

// exists reports whether k has a record; the record stays cached for get.
func (t *txn) exists(k []byte) bool {
	n := t.get(k)
	return n.alive() || n.active()
}

func (t *txn) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// touch marks n changed: it keeps zeroSince in step with the count.
func (t *txn) touch(k []byte, n *node) {
	if n.count > 0 {
		n.zeroSince = 0
	} else if n.zeroSince == 0 {
		n.zeroSince = t.now
	}
	t.markDirty(k)
	if k[0] == kBlob && t.p.opts.Partition.Role == RoleRepos {
		if e := t.cache[string(k)]; e.held != (n.count > 0) {
			e.held = n.count > 0
			e.stateAt, e.stateTime = t.seq, t.now
		}
	}
}

func (t *txn) named(k []byte, n *node) {
	if t.seq > n.lastSeq {
		n.lastSeq = t.seq
	}
	t.touch(k, n)
}

func (t *txn) lease(k []byte, n *node) {
	if until := t.now + int64(t.p.opts.Grace); until > n.lease {
		n.lease = until
		if k[0] == kBlob && n.count == 0 && t.p.opts.Partition.Role == RoleRepos {
			// An unheld copy's lease: its digest partition's to know.
			t.markDirty(k)
			e := t.cache[string(k)]
			e.stateAt, e.stateTime = t.seq, t.now
		}
	}
	t.named(k, n)
}

// writeHook, when set (benchmarks only), sees every put and every delete
// (del true) Apply makes, in order.
var writeHook func(bucket *bolt.Bucket, k, v []byte, del bool)

func (t *txn) put(b *bolt.Bucket, k, v []byte) {
	if writeHook != nil {
		writeHook(b, k, v, false)
	}
	if err := b.Put(k, v); err != nil {
		t.fail(err)
	}
}

func (t *txn) del(b *bolt.Bucket, k []byte) {
	if writeHook != nil {
		writeHook(b, k, nil, true)
	}
	if err := b.Delete(k); err != nil {
		t.fail(err)
	}
}

// addEdge records from → to and counts it: in to's record while it has
// room, else as an in/ sub-key (holders.go). Only a node with sub-key
// holders needs a lookup to know whether from is one of them.
func (t *txn) addEdge(from, to []byte, kind byte) {
	n := t.get(to)
	i, ok := n.inlineAt(from)
	if ok || n.subHolders() && t.has(subKey(to, subIn, from)) {
		return
	}
	if len(n.in) < inlineHolders {
		in := make([]edge, 0, len(n.in)+1) // a new slice: the record as read shares the old
		in = append(append(append(in, n.in[:i]...), edge{kind: kind, to: bytes.Clone(from)}), n.in[i:]...)
		n.in = in
	} else {
		t.put(t.nodes, subKey(to, subIn, from), []byte{kind})
	}
	n.count++
	t.touch(to, n)
	t.refresh(to, n)
}

// removeEdge removes from → to and uncounts it.
func (t *txn) removeEdge(from, to []byte) {
	n := t.get(to)
	if n.count == 0 {
		return
	}
	if i, ok := n.inlineAt(from); ok {
		n.in = slices.Delete(slices.Clone(n.in), i, i+1)
	} else {
		k := subKey(to, subIn, from)
		if !n.subHolders() || !t.has(k) {
			return
		}
		t.del(t.nodes, k)
	}
	n.count--
	t.touch(to, n)
	t.refresh(to, n)
}

// has reports whether nodes/ holds the key k.
func (t *txn) has(k []byte) bool {
	_, ok := t.lookup(k)
	return ok
}

// refresh brings a node's edges in line with whether it is alive.
func (t *txn) refresh(k []byte, n *node) {
	switch {
	case n.alive() && !n.active():
		n.setFlag(flagActive, true)
		t.touch(k, n)
		for _, e := range n.decl {
			t.link(k, e)
		}
	case !n.alive() && n.active():
		n.setFlag(flagActive, false)
		t.touch(k, n)
		for _, e := range n.decl {
			t.unlink(k, e)
		}
		if k[0] == kManifest {
			t.del(t.nodes, subKey(k, subBody, nil))
		}
	}
}

// link makes one declared edge of the active node k real.
func (t *txn) link(k []byte, e edge) {
	if e.kind == edgeSubject {
		t.put(t.nodes, subKey(e.to, subReferrer, k), nil)
		if s := t.get(e.to); s.present() && t.get(k).present() {
			t.addEdge(e.to, k, edgeSubject)
		}
		return
	}
	t.addEdge(k, e.to, e.kind)
}

func (t *txn) unlink(k []byte, e edge) {
	if e.kind == edgeSubject {
		t.del(t.nodes, subKey(e.to, subReferrer, k))
		t.removeEdge(e.to, k)
		return
	}
	t.removeEdge(k, e.to)
}

// forReferrers calls fn for each referrer declaring k as its subject.
func (t *txn) forReferrers(k []byte, fn func(r []byte)) {
	var rs [][]byte
	err := forSub(t.nodes.Cursor(), k, subReferrer, func(r, _ []byte) error {
		rs = append(rs, append([]byte(nil), r...))
		return nil
	})
	if err != nil {
		t.fail(err)
		return
	}
	for _, r := range rs {
		fn(r)
	}
}

// setDecl replaces a node's declared edges, changing only what differs.
func (t *txn) setDecl(k []byte, n *node, decl []edge) {
	if n.active() {
		for _, e := range n.decl {
			if !hasEdge(decl, e) {
				t.unlink(k, e)
			}
		}
		for _, e := range decl {
			if !hasEdge(n.decl, e) {
				t.link(k, e)
			}
		}
	}
	n.decl = decl
	t.touch(k, n)
}

func hasEdge(es []edge, e edge) bool {
	for _, x := range es {
		if x.kind == e.kind && bytes.Equal(x.to, e.to) {
			return true
		}
	}
	return false
}

// setPresent records whether the object exists in storage. A present
// manifest holds the present referrers that declare it as their subject:
// the subject edge follows presence, not liveness, so an explicit delete of
// a referrer is honoured and no cycle of references can hold itself up.
func (t *txn) setPresent(k []byte, n *node, on bool) {
	was := n.present()
	n.setFlag(flagPresent, on)
	t.touch(k, n)
	if on {
		t.refresh(k, n)
	}
	if was != on && k[0] == kManifest {
		t.forReferrers(k, func(r []byte) {
			if on && t.get(r).present() {
				t.addEdge(k, r, edgeSubject)
			} else if !on {
				t.removeEdge(k, r)
			}
		})
		for _, e := range n.decl {
			if e.kind != edgeSubject {
				continue
			}
			if on && t.get(e.to).present() {
				t.addEdge(e.to, k, edgeSubject)
			} else if !on {
				t.removeEdge(e.to, k)
			}
		}
	}
	if !on {
		t.refresh(k, n)
	}
}

// isRoot reports whether a present node is never collected.
func (t *txn) isRoot(k []byte, n *node) bool {
	if k[0] == kTag {
		return true
	}
	root := n.flags&flagPinned != 0 || (k[0] == kManifest && t.p.opts.Untagged == PolicyKeep)
	return root && !t.purgedManifest(k, n)
}

// eligibleAt is when a present, unheld node may be collected.
func (p *Projection) eligibleAt(k []byte, n *node) int64 {
	wait := p.opts.Grace
	if k[0] == kBlob && p.opts.Retention > wait {
		wait = p.opts.Retention
	}
	at := n.zeroSince + int64(wait)
	if n.lease > at {
		at = n.lease
	}
	if k[0] == kManifest && p.policyAt != 0 && p.policyAt+int64(p.opts.Grace) > at {
		at = p.policyAt + int64(p.opts.Grace)
	}
	return at
}

// flush writes every changed node back, keeping the queue in step.
func (t *txn) flush() error {
	if t.pf != nil {
		// From here on the bucket is not the state the reader reads.
		t.pf.close()
		t.pf, t.pre = nil, nil
	}
	if t.err != nil {
		return t.err
	}
	// In key order: the commit is the same for the same batch, and
	// neighbouring keys share their pages' descent.
	slices.SortFunc(t.dirty, func(a, b *entry) int { return strings.Compare(a.key, b.key) })
	for _, e := range t.dirty {
		k := []byte(e.key)
		n := e.n
		var want int64
		if n.present() && n.count == 0 && !t.isRoot(k, n) {
			want = t.p.eligibleAt(k, n)
			if t.purgedManifest(k, n) {
				want = max(want, t.purgedAt(k)+int64(t.p.opts.Grace))
			}
			if want == 0 {
				want = 1
			}
		}
		if n.queuedAt != want {
			if n.queuedAt != 0 {
				t.del(t.queue, queueKey(n.queuedAt, k))
			}
			if want != 0 {
				t.put(t.queue, queueKey(want, k), nil)
			}
			n.queuedAt = want
		}
		t.heldStatement(e)
		t.delta.node(k, e.orig, -1)
		if !n.alive() && !n.active() {
			t.del(t.nodes, k)
		} else {
			t.put(t.nodes, k, n.encode())
			t.delta.node(k, n, 1)
		}
	}
	t.dirty = t.dirty[:0]
	clear(t.cache)
	t.flushSources()
	if t.err == nil {
		if err := addCounts(t.tx, t.delta); err != nil {
			t.fail(err)
		}
		t.delta = newCounts()
	}
	return t.err
}

func (t *txn) putJSON(b *bolt.Bucket, k []byte, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		t.fail(err)
		return
	}
	t.put(b, k, data)
}

// errStop ends a ForEach early.
var errStop = errors.New("stop")
