package refcount

// Partitioning (docs/PARTITIONING.md): a projection may hold one share of
// the registry's graph instead of all of it.
//
//   - A repository partition ("r<i>" of Repos) applies the events of the
//     repositories RepoPartition places on it, and keeps every
//     repository-scoped node of them as an unpartitioned projection does.
//     The blobs they reference are kept as copies that only count the
//     partition's own references: a copy is never present (blob data is
//     not the partition's) and lives while something of the partition
//     holds it. Whenever a copy starts or stops being held, or an unheld
//     copy gets a new lease (a pull of the digest), flush writes a blob.held
//     statement to outbox/, in the same transaction; a relay publishes the
//     outbox into the log and removes what it published.
//   - A digest partition ("d<j>" of Digests) holds the blob data of the
//     digests DigestPartition places on it. Its blobs' holders are the
//     repository partitions whose latest statement says they hold it: an
//     in-edge from the partition's holder key. It applies, per blob and
//     repository partition, only a statement newer than the last one it
//     applied (a version sub-key), so that a statement delivered late, twice
//     or out of order changes nothing.
//
// Both follow the one event log and skip what is not theirs; the cursor
// moves over every event alike. Refused events pause a repository partition
// for its own repositories (and for all, without one); they pause every
// digest partition, since a lost event in any repository may have linked
// any blob. A digest partition lifts a repository's pause when the
// repository partition that holds it completes a reconcile begun after it,
// and the registry-wide pause when every repository partition has.

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Role is what share of the registry a projection holds.
type Role byte

// The roles.
const (
	// RoleAll: the whole registry (no partitioning).
	RoleAll Role = 0
	// RoleRepos: the repository-scoped nodes of some repositories.
	RoleRepos Role = 'r'
	// RoleDigests: the blob data of a range of digests.
	RoleDigests Role = 'd'
)

// Partition is the share of the registry a projection holds; the zero
// value is the whole registry.
type Partition struct {
	Role  Role
	Index int
	// Repos and Digests are how many repository and digest partitions the
	// registry is split into.
	Repos, Digests int
}

// ErrPartition is returned for a partition that cannot be: a bad name or
// counts, or a projection file made for another partition.
var ErrPartition = errors.New("refcount: partition")

// ParsePartition parses "r<i>" or "d<j>" ("" for the whole registry), of
// repos repository and digests digest partitions.
func ParsePartition(name string, repos, digests int) (Partition, error) {
	if name == "" {
		return Partition{}, nil
	}
	var p Partition
	i, err := strconv.Atoi(name[1:])
	if len(name) < 2 || err != nil || i < 0 {
		return p, fmt.Errorf("%w: %q: want r<index> or d<index>", ErrPartition, name)
	}
	p = Partition{Role: Role(name[0]), Index: i, Repos: repos, Digests: digests}
	if err := p.Validate(); err != nil {
		return p, err
	}
	if p.Name() != name { // "r01" would be r1 here, and another instance's keys elsewhere
		return p, fmt.Errorf("%w: %q: write it %s", ErrPartition, name, p.Name())
	}
	return p, nil
}

// Validate checks the role, the index and the counts.
func (p Partition) Validate() error {
	switch {
	case p.Role == RoleAll && p == Partition{}:
		return nil
	case p.Role != RoleRepos && p.Role != RoleDigests:
		return fmt.Errorf("%w: unknown role %q", ErrPartition, p.Role)
	case p.Repos < 1 || p.Digests < 1 || p.Digests > 256:
		return fmt.Errorf("%w: want at least one repository partition and 1 to 256 digest partitions, have %d and %d",
			ErrPartition, p.Repos, p.Digests)
	case p.Role == RoleRepos && p.Index >= p.Repos, p.Role == RoleDigests && p.Index >= p.Digests:
		return fmt.Errorf("%w: %s: index out of range", ErrPartition, p.Name())
	}
	return nil
}

// Name is "r<i>", "d<j>", or "" for the whole registry.
func (p Partition) Name() string {
	if p.Role == RoleAll {
		return ""
	}
	return string(p.Role) + strconv.Itoa(p.Index)
}

// String describes the partition for logs and the file's meta.
func (p Partition) String() string {
	if p.Role == RoleAll {
		return "whole registry"
	}
	return fmt.Sprintf("%s of %d repository and %d digest partitions", p.Name(), p.Repos, p.Digests)
}

// Layout is "<repos>/<digests>": partitions of one registry share it
// ("" for the whole registry).
func (p Partition) Layout() string {
	if p.Role == RoleAll {
		return ""
	}
	return fmt.Sprintf("%d/%d", p.Repos, p.Digests)
}

// HasRepo reports whether the repository's nodes are this partition's.
func (p Partition) HasRepo(repo string) bool {
	switch p.Role {
	case RoleAll:
		return true
	case RoleRepos:
		return RepoPartition(repo, p.Repos) == p.Index
	}
	return false
}

// HasDigest reports whether the blob data of d is this partition's.
func (p Partition) HasDigest(d digest.Digest) bool {
	switch p.Role {
	case RoleAll:
		return true
	case RoleDigests:
		return DigestPartition(d, p.Digests) == p.Index
	}
	return false
}

// HasPrefix reports whether blob directory prefix (the first two hex
// digits of digests) holds any digest of this partition.
func (p Partition) HasPrefix(prefix string) bool {
	if p.Role != RoleDigests {
		return p.Role == RoleAll
	}
	b, err := hex.DecodeString(prefix)
	if err != nil || len(b) != 1 {
		return true // not a layout this knows: walk it, the digests decide
	}
	lo, hi := uint32(b[0])<<24, uint32(b[0])<<24|0xFFFFFF
	return DigestRange(lo, p.Digests) <= p.Index && p.Index <= DigestRange(hi, p.Digests)
}

// RepoPartition is the partition of a repository among n: a jump
// consistent hash (Lamping and Veach) of the FNV-1a hash of its name, so
// that growing n to n+1 moves only a 1/(n+1) share of the repositories.
func RepoPartition(repo string, n int) int { return JumpHash(RepoHash(repo), n) }

// RepoHash is the FNV-1a hash of a repository name that RepoPartition places by.
func RepoHash(repo string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(repo))
	return h.Sum64()
}

// JumpHash is Lamping and Veach's jump consistent hash of key into n buckets.
func JumpHash(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// DigestPartition is the partition of a digest among n, by range of the
// leading 32 bits of its hash: a digest partition owns whole storage
// prefixes (blobs/sha256/<2 hex>/) of its range, and walks them alone.
func DigestPartition(d digest.Digest, n int) int {
	enc := d.Encoded()
	var lead [4]byte
	if len(enc) >= 8 {
		_, _ = hex.Decode(lead[:], []byte(enc[:8]))
	}
	return DigestRange(binary.BigEndian.Uint32(lead[:]), n)
}

// DigestRange is the partition among n of a digest whose hash begins with
// the 32 bits lead.
func DigestRange(lead uint32, n int) int { return int(uint64(lead) * uint64(n) >> 32) }

// Partition name prefixes in Reconciliation.Partition and holder keys.
const holderRepoPrefix = "r"

// holderKey is the in-edge source key of repository partition i in a
// digest partition: kind kHolder, no repository, the name "r<i>".
func holderKey(i int) []byte { return key2(kHolder, "", holderRepoPrefix+strconv.Itoa(i)) }

// takes reports whether event e is this partition's to apply (the cursor
// moves past it either way).
func (p Partition) takes(e *events.Event) bool {
	switch p.Role {
	case RoleAll:
		// A partition's reconcile walked its share, not the registry.
		return e.Kind != events.BlobHeld && (e.Kind != events.Reconciled || e.Reconcile.Partition == "")
	case RoleRepos:
		switch e.Kind {
		case events.BlobHeld:
			return false
		case events.Refused:
			return e.Refused.Repo == "" || p.HasRepo(e.Refused.Repo)
		case events.Reconciled:
			return e.Reconcile.Partition == p.Name() && e.Reconcile.Layout == p.Layout()
		case events.BlobObserved:
			return e.Blob.Repo != "" && p.HasRepo(e.Blob.Repo)
		case events.ObservedAbsent:
			return e.Absent.Node.Kind != events.NodeBlob && p.HasRepo(e.Absent.Node.Repo)
		case events.Collected, events.Healed:
			return e.Collected.Node.Kind != events.NodeBlob && p.HasRepo(e.Collected.Node.Repo)
		}
		return p.HasRepo(e.Repository())
	case RoleDigests:
		switch e.Kind {
		case events.BlobHeld:
			return p.HasDigest(e.Held.Digest) && e.Held.Layout == p.Layout() && e.Held.Partition < p.Repos
		case events.Refused:
			return true
		case events.Reconciled:
			return e.Reconcile.Layout == p.Layout()
		case events.BlobObserved:
			if e.Blob.Repo != "" {
				return p.mentions(e)
			}
			return p.HasDigest(e.Blob.Digest)
		case events.BlobPushed, events.BlobMounted, events.Touched, events.ManifestPushed,
			events.LegacyImageCreated, events.LegacyDerived:
			return p.mentions(e)
		case events.ObservedAbsent:
			return e.Absent.Node.Kind == events.NodeBlob && p.HasDigest(e.Absent.Node.Digest)
		case events.Collected, events.Healed:
			return e.Collected.Node.Kind == events.NodeBlob && p.HasDigest(e.Collected.Node.Digest)
		}
	}
	return false
}

// record is how meta/partition stores a partition: "r<i>/<repos>/<digests>",
// or "" for the whole registry.
func (p Partition) record() string {
	if p.Role == RoleAll {
		return ""
	}
	return p.Name() + "/" + p.Layout()
}

// parseRecord reads meta/partition.
func parseRecord(s string) (Partition, error) {
	if s == "" {
		return Partition{}, nil
	}
	f := strings.Split(s, "/")
	if len(f) != 3 {
		return Partition{}, fmt.Errorf("%w: meta partition %q", ErrCorrupt, s)
	}
	repos, err1 := strconv.Atoi(f[1])
	digests, err2 := strconv.Atoi(f[2])
	if err := errors.Join(err1, err2); err != nil {
		return Partition{}, fmt.Errorf("%w: meta partition %q", ErrCorrupt, s)
	}
	return ParsePartition(f[0], repos, digests)
}

// named lists the digests of blob data an event names: what a digest
// partition leases when the event is in its log before the statements it
// causes (mentioned).
func named(e *events.Event) []digest.Digest {
	switch {
	case e.Blob != nil:
		return []digest.Digest{e.Blob.Digest}
	case e.Ref != nil && e.Kind == events.Touched:
		return []digest.Digest{e.Ref.Digest}
	case e.Manifest != nil:
		ds := []digest.Digest{e.Manifest.Digest}
		for _, b := range e.Manifest.Blobs {
			ds = append(ds, b.Digest)
		}
		for _, c := range e.Manifest.Children {
			ds = append(ds, c.Digest)
		}
		return ds
	case e.Legacy != nil:
		ds := slices.Clone(e.Legacy.Derived)
		if e.Legacy.Storage != "" {
			ds = append(ds, e.Legacy.Storage)
		}
		return ds
	}
	return nil
}

// mentions reports whether an event names blob data of this partition.
func (p Partition) mentions(e *events.Event) bool {
	return slices.ContainsFunc(named(e), p.HasDigest)
}

// mentioned leases, in a digest partition, the blobs of its range that an
// event of a repository names: the statement that event causes comes
// later (after the repository partition applied it and its relay ran),
// and a purge whose barrier read the log before the event, but whose
// catch-up applied it, must see it as the whole projection would. The
// lease holds the blob for the grace, long enough for the statement; a
// repository partition that is down holds every purge at the barrier.
func (t *txn) mentioned(e *events.Event) {
	for _, d := range named(e) {
		if !t.p.opts.Partition.HasDigest(d) {
			continue
		}
		k := blobKey(d)
		if !t.exists(k) {
			continue // unknown here: no candidate to protect
		}
		if n := t.get(k); !touchFresh(n, t.now, t.p.opts.Grace) {
			t.lease(k, n)
		}
	}
}

// checkPartition records the partition of a new file, and refuses a file
// made for another one: its state would be wrong for this one.
func (p *Projection) checkPartition(tx *bolt.Tx, fresh bool) error {
	meta := tx.Bucket(bucketMeta)
	got := meta.Get(keyPartition)
	if got == nil && (fresh || p.opts.Partition.Role == RoleAll) {
		return meta.Put(keyPartition, []byte(p.opts.Partition.record()))
	}
	have, err := parseRecord(string(got))
	if err != nil {
		return err
	}
	if have != p.opts.Partition {
		return fmt.Errorf("%w: the file holds the projection of %s, not of %s (give each partition its own data directory)",
			ErrPartition, have, p.opts.Partition)
	}
	return nil
}

// readPartition gives a read-only opening the partition the file holds.
func (p *Projection) readPartition(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return nil
	}
	part, err := parseRecord(string(meta.Get(keyPartition)))
	if err == nil {
		p.opts.Partition = part
	}
	return err
}

// stateHolding writes, in a repository partition, the statement of
// whether it holds blob copy k (see the file comment), replacing any the
// relay has not published yet: only the newest state matters.
func (t *txn) stateHolding(k []byte, n *node, version uint64, at int64) {
	ref, err := parseNodeKey(k)
	if err != nil {
		t.fail(err)
		return
	}
	part := t.p.opts.Partition
	h := &events.Holding{Partition: part.Index, Layout: part.Layout(), Digest: ref.Digest, Held: n.count > 0,
		Size: n.size, Version: version}
	if !h.Held && n.lease != 0 {
		// (A held copy's lease matters once it is no longer held, and
		// that statement carries it: every lease it got while held.)
		h.Lease = time.Unix(0, n.lease).UTC()
	}
	ev := events.Event{V: events.Version, Kind: events.BlobHeld, Time: time.Unix(0, at).UTC(),
		ID: fmt.Sprintf("held-%s-%d-%s", part.Name(), version, ref.Digest.Encoded()), Source: "refgc-" + part.Name(), Held: h}
	t.putJSON(t.tx.Bucket(bucketOutbox), k, ev)
}

// holding applies, in a digest partition, a repository partition's
// statement about one of its blobs, unless it applied a newer one.
func (t *txn) holding(h *events.Holding) {
	k := blobKey(h.Digest)
	from := holderKey(h.Partition)
	vk := subKey(k, subVersion, from)
	if v, ok := t.lookup(vk); ok && readU64(v) >= h.Version {
		return
	}
	t.put(t.nodes, vk, u64(h.Version))
	n := t.get(k)
	if h.Size > 0 {
		n.size = h.Size
	}
	if l := h.Lease.UnixNano(); !h.Lease.IsZero() && l > n.lease {
		n.lease = l
	}
	t.named(k, n)
	if h.Held {
		// The registry linked the data in a repository: it exists.
		t.setPresent(k, n, true)
		t.addEdge(from, k, edgeHeld)
		t.unpinOrphan(k, n)
		return
	}
	t.removeEdge(from, k)
}

// orphan pins, in a digest partition, blob data its walk found with no
// holder: a repository partition whose projection missed a link to it (a
// lost notification no pause covered) finds the link in its own walk, so
// the blob waits until every repository partition has reconciled after it.
// (An unpartitioned walk sees the links and the data together.)
func (t *txn) orphan(d digest.Digest) {
	if t.p.opts.Partition.Role != RoleDigests {
		return
	}
	k := blobKey(d)
	n := t.get(k)
	if n.count > 0 {
		return
	}
	n.setFlag(flagPinned, true)
	t.markDirty(k)
	t.put(t.tx.Bucket(bucketOrphans), k, u64(t.seq))
}

// unpinOrphan ends an orphan's wait.
func (t *txn) unpinOrphan(k []byte, n *node) {
	b := t.tx.Bucket(bucketOrphans)
	if b.Get(k) == nil {
		return
	}
	t.del(b, k)
	n.setFlag(flagPinned, false)
	t.markDirty(k)
}

// reconciledOrphans records repository partition i's whole reconcile at
// asOf, and unpins the orphans found before every repository partition's.
func (t *txn) reconciledOrphans(i int, asOf uint64) {
	meta := t.tx.Bucket(bucketMeta)
	t.put(meta, keyReconciledBy(i), u64(asOf))
	all := asOf
	for j := range t.p.opts.Partition.Repos {
		all = min(all, readU64(meta.Get(keyReconciledBy(j))))
	}
	var done [][]byte
	err := t.tx.Bucket(bucketOrphans).ForEach(func(k, v []byte) error {
		if readU64(v) <= all {
			done = append(done, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		t.fail(err)
		return
	}
	for _, k := range done {
		// Leased: the statements of the reconciles that unpin it come
		// after them in the log (restateHolds), perhaps after the purge
		// round's barrier; the next round's barrier waits for them.
		n := t.get(k)
		t.unpinOrphan(k, n)
		t.lease(k, n)
	}
}

// heldStatement states, in flush, a repository partition's blob copy e as
// of the last event in the batch that changed whether it is held or gave
// it a lease while unheld (entry.stateAt): a statement is a state at a
// sequence, whatever the batches, so that HA twins, replays and restored
// snapshots state the same thing at the same version.
func (t *txn) heldStatement(e *entry) {
	if t.p.opts.Partition.Role != RoleRepos || e.key[0] != kBlob || e.stateAt == 0 {
		return
	}
	t.stateHolding([]byte(e.key), e.n, e.stateAt, e.stateTime)
}

// reconciledPartition lifts, in a digest partition, the pauses a
// repository partition's reconcile covers: its repositories', and its
// share of the registry-wide pause, which goes once every repository
// partition has reconciled since it.
func (t *txn) reconciledPartition(r *events.Reconciliation) {
	name := r.Partition
	if name == t.p.opts.Partition.Name() && len(r.Repos) == 0 {
		// Its own walk of its blobs: it recovers no lost event.
		t.put(t.tx.Bucket(bucketMeta), keyReconciled, u64(r.AsOf))
		return
	}
	if !strings.HasPrefix(name, holderRepoPrefix) {
		return
	}
	n := t.p.opts.Partition.Repos
	i, err := strconv.Atoi(name[len(holderRepoPrefix):])
	if err != nil || i >= n || name != holderRepoPrefix+strconv.Itoa(i) {
		return // not a repository partition of this layout
	}
	if len(r.Repos) == 0 {
		t.reconciledOrphans(i, r.AsOf)
	}
	t.forPauses(func(k []byte, p *Pause) (drop, put bool) {
		if p.LastSeq > r.AsOf {
			return false, false
		}
		if p.Repo != "" {
			return RepoPartition(p.Repo, n) == i && (len(r.Repos) == 0 || slices.Contains(r.Repos, p.Repo)), false
		}
		if len(r.Repos) > 0 || slices.Contains(p.Covered, i) {
			return false, false
		}
		p.Covered = append(p.Covered, i)
		return len(p.Covered) >= n, true
	})
}

// restateHolds states again, after a repository partition's whole
// reconcile, every blob it holds: a digest partition that lost what it
// was told (rebuilt from storage, or a log that aged out) learns it anew
// before it unpins the orphans its own walk found (reconciledOrphans),
// since its purges pass the barrier, which waits for these statements.
func (t *txn) restateHolds(r *events.Reconciliation) {
	if len(r.Repos) > 0 || t.flush() != nil { // the scan reads the bucket: write the working set first
		return
	}
	c := t.nodes.Cursor()
	type held struct {
		k []byte
		n *node
	}
	var hs []held
	for k, v := c.Seek([]byte{kBlob}); k != nil && k[0] == kBlob; k, v = c.Next() {
		if isSub(k) {
			continue
		}
		n, err := decodeNode(v)
		if err != nil {
			t.fail(fmt.Errorf("node %q: %w", k, err))
			return
		}
		if n.count > 0 {
			hs = append(hs, held{append([]byte(nil), k...), n})
		}
	}
	for _, h := range hs {
		t.stateHolding(h.k, h.n, t.seq, t.now)
	}
}

// Outbox lists up to limit statements a repository partition has not yet
// published, in key order.
func (p *Projection) Outbox(limit int) ([]events.Event, error) {
	var out []events.Event
	err := p.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			var e events.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("%w: outbox %q: %w", ErrCorrupt, k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Published removes the published statements from the outbox, each unless
// a newer statement about its blob replaced it meanwhile.
func (p *Projection) Published(evs []events.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return p.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		for _, e := range evs {
			k := blobKey(e.Held.Digest)
			var cur events.Event
			if raw := b.Get(k); raw == nil || json.Unmarshal(raw, &cur) != nil || cur.ID != e.ID {
				continue
			}
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// PublishedThrough is the sequence through which every statement is
// published: the cursor if the outbox is empty, else just below its oldest
// statement's version. It reads the whole outbox: call it once it is
// drained.
func (p *Projection) PublishedThrough() (through uint64, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		through = readU64(tx.Bucket(bucketMeta).Get(keyCursor))
		return tx.Bucket(bucketOutbox).ForEach(func(_, v []byte) error {
			var e events.Event
			if json.Unmarshal(v, &e) == nil && e.Held != nil && e.Held.Version <= through {
				through = e.Held.Version - 1
			}
			return nil
		})
	})
	return through, err
}
