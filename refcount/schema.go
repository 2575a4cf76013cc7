// Package refcount is the reference-count projection of the event log: the
// reference graph of a registry, folded from events into one bbolt file.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the projection. It depends on events only, never
// on NATS (events/eventlog feeds it through its Apply) or a cloud SDK.
//
// # Schema
//
//	meta/
//	  schema   → uint64 schema version (SchemaVersion)
//	  cursor   → uint64 last applied stream sequence
//	  policy   → "delete" | "keep"
//	  policyAt → uint64 unix ns when the policy last became "delete" (its grace starts afresh)
//	  reconciled → uint64 AsOf of the last reconcile of the whole registry
//	  counts   → the figures of Stats, kept in step by every write (counts.go)
//	  partition → the share of the registry the file holds ("r<i>/<repos>/<digests>", "" for all of it)
//	  reconciled.r<i> → uint64 AsOf of repository partition i's last whole reconcile
//	                    (digest partitions)
//	nodes/
//	  <node key>                    → node record (flags, count, lease, zero-since,
//	                                  queue time, last event sequence, size, media
//	                                  type, declared edges, last heard present,
//	                                  origin: the interned source that stated it,
//	                                  and up to 8 incoming edges, holders.go)
//	  <node key> 0x01 'i' <from key>     → edge kind   (an incoming edge the record
//	                                       has no room for: a holder)
//	  <node key> 0x01 'r' <referrer key> → ∅           (a referrer declaring it as subject)
//	  <node key> 0x01 'h' <tag key>      → state byte  (a tag that pointed at this manifest)
//	  <node key> 0x01 'j'                → the manifest's body: what the revision references
//	                                       (binary, body.go; JSON in files of schema 5)
//	  <blob key> 0x01 'v' <holder key>   → uint64 version of the newest statement applied
//	                                       from that repository partition (digest partitions)
//	queue/
//	  <u64 eligible-at ns><node key> → ∅   (the zero-ref queue, oldest first)
//	trash/
//	  <manifest key> → JSON TrashEntry (unlinked, not yet purged; restorable)
//	tombs/
//	  <layer key> → uint64 unix ns (a layer link the collector unlinked; healable until pruned)
//	  <tag key>   → uint64 unix ns (a tag the collector removed: expired or purged; likewise)
//	heals/
//	  <node key> → JSON Heal (an unlinked node a later event proved live: re-link it)
//	stamps/
//	  <tag key> → uint64 unix ns (registry time of the tag's last change; kept after a delete)
//	  <label key> 0x01 's' <manifest key> → uint64 unix ns (time of the label's last
//	                                  attach or detach on that manifest)
//	origins/
//	  'n' <source> → uint64 id (an event source interned for node records)
//	  'i' <uint64 id> → <source>
//	sources/
//	  <source> → JSON SourceState (delivery watermark of one registry instance)
//	hosts/
//	  <host> → <source> (the instance a registry host runs now)
//	pauses/
//	  <repo> → JSON Pause (a view that may be incomplete; "" for the whole registry)
//	intents/
//	  <intent id> → JSON Intent (collector work recorded before a storage operation;
//	                 dropped by the apply of the Collected event that commits it,
//	                 by the collector once it has undone a removal that raced, or
//	                 by the collector when its last look before the operation
//	                 found the node raced: nothing done)
//	tags/
//	  <tag key> → JSON TagLife (a tag's expiry, or its stay in the time machine)
//	lifetimes/
//	  'e' <u64 expires ns><tag key> → ∅  (present tags by expiry)
//	  'r' <u64 until ns><tag key>   → ∅  (tags in the time machine by the end of their window)
//	purges/
//	  <repo> → uint64 unix ns (when the repository was last purged: repository.deleted)
//	outbox/
//	  <blob key> → JSON events.Event (a repository partition's blob.held statement
//	                                  not yet published; partition.go)
//	orphans/
//	  <blob key> → uint64 sequence (a digest partition's blob found in storage with
//	                                no holder: pinned until every repository
//	                                partition has reconciled after it)
//
// Node keys are a kind byte followed by the node's identity: 't' repo 0x00
// tag, 'm' repo 0x00 digest, 'l' repo 0x00 digest (a layer link), 'b' digest,
// 'a' repo 0x00 label, 'g' repo 0x00 legacy image id; and, as the source of
// in-edges only, 'p' 0x00 "r<i>" (a repository partition holding a blob, in
// a digest partition). A digest is stored as
// an algorithm byte (1 sha256, 2 sha384, 3 sha512) and the raw hash, so its
// length is known from its first byte. Validated names never hold 0x00 or
// 0x01, so keys are unambiguous, a key's node part has a length known from
// the key itself, and a repository's nodes of one kind share the prefix
// kind repo 0x00. A node's edges, referrers, tag
// history and manifest body sit right after its record, under the node key
// and 0x01: what one event changes about a node is on one page, so a batch
// dirties (and a commit writes) as few pages as the keys allow.
//
// # Invariants
//
//   - A node is alive when it is present in storage or something holds it
//     (count > 0). Exactly the alive nodes have their declared edges in in/;
//     a node that is neither present nor held has no record.
//   - A node's count equals the number of its incoming edges: those its
//     record keeps (at most inlineHolders, in key order) and its in/
//     sub-keys. An edge stays where it was put until it goes. Check
//     recomputes every count from the declarations of alive nodes and
//     reports any difference.
//   - A subject → referrer edge exists while both are present: a referrer
//     lives as long as its subject does. Presence, not liveness, so that an
//     explicit delete of a referrer is honoured and no cycle of references
//     can hold itself up.
//   - The queue holds exactly the present, unheld nodes that are not roots
//     (tags; and manifests under the keep policy), keyed by the time they
//     become eligible for collection: the latest of their lease and the time
//     they became unheld plus the grace (plus the trash retention for blob
//     data).
//   - The cursor is written in the same transaction as the state it
//     describes; events at or below it are skipped, so applying a batch
//     twice changes nothing.
//   - A node the collector unlinked keeps a tombstone (its trash entry, for
//     a manifest; tombs/, for a layer link) until its data may be purged.
//     An event that states it present or referenced again removes the
//     tombstone and records a heal: the collector re-links it in storage.
//     An explicit delete drops the tombstone instead.
//   - Tag changes are ordered by the registry's timestamp per tag (last
//     writer wins): a tag event older than stamps/ says is ignored. Label
//     attaches and detaches are ordered the same way per label and manifest.
//   - A node's origin is the source of the newest event that stated it
//     present (a push, a tag, a label attach, a legacy image); ids in
//     origins/ are given in the order sources first state anything, so a
//     replay gives the same ids.
//   - sources/ holds, per registry instance, the newest event time and the
//     newest receipt time of the events ingested from it (those with
//     Received set); hosts/ maps a registry host to its current instance. A
//     new instance on a known host (a restart: its queue was lost), and
//     every Refused event, add a pause; a Reconciled event whose walk began
//     at or after a pause's sequence, over its repository or the whole
//     registry, removes it.
//   - A tag in the time machine (deleted, expired, purged or found absent,
//     and its repository's window not over) is not present but alive: it
//     holds its manifest. Exactly such tags have flagRetained, a tags/
//     record with Removed set and an 'r' entry in lifetimes/; a present
//     tag with an expiry has a tags/ record and an 'e' entry. Only a
//     Collected event for the tag ends either state.
//   - A manifest revision present at its repository's purge, and not
//     pushed since (flagPurged), is no root, whatever the policy, and waits
//     the grace from the purge before it may be collected.
//   - Apply is deterministic: it reads no clock. Leases and queue times come
//     from the events' own times, so replaying the log rebuilds the same file.
//   - Within a write transaction, node records are written only by flush:
//     between flushes a node changes in the transaction's working set. The
//     reader ahead of Apply (prefetch.go) depends on it; a change that
//     writes a record anywhere else must stop the reader first, as flush
//     does.
package refcount

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// SchemaVersion is the layout version this package writes.
const SchemaVersion = 6

// Bucket and meta keys, declared once.
var (
	bucketMeta    = []byte("meta")
	bucketNodes   = []byte("nodes")
	bucketQueue   = []byte("queue")
	bucketTrash   = []byte("trash")
	bucketIntents = []byte("intents")
	bucketTombs   = []byte("tombs")
	bucketHeals   = []byte("heals")
	bucketStamps  = []byte("stamps")
	bucketSources = []byte("sources")
	bucketHosts   = []byte("hosts")
	bucketPauses  = []byte("pauses")
	bucketOrigins = []byte("origins")
	// Version 4.
	bucketTags      = []byte("tags")
	bucketLifetimes = []byte("lifetimes")
	bucketPurges    = []byte("purges")
	// Version 5.
	bucketOutbox  = []byte("outbox")
	bucketOrphans = []byte("orphans")

	allBuckets = [][]byte{bucketMeta, bucketNodes, bucketQueue, bucketTrash, bucketIntents,
		bucketTombs, bucketHeals, bucketStamps, bucketSources, bucketHosts, bucketPauses, bucketOrigins,
		bucketTags, bucketLifetimes, bucketPurges, bucketOutbox, bucketOrphans}

	keySchema     = []byte("schema")
	keyCursor     = []byte("cursor")
	keyPolicy     = []byte("policy")
	keyPolicyAt   = []byte("policyAt")
	keyReconciled = []byte("reconciled")
	keyCounts     = []byte("counts")
	keyPartition  = []byte("partition")
)

// keyReconciledBy is the meta key of repository partition i's last whole
// reconcile, in a digest partition.
func keyReconciledBy(i int) []byte { return fmt.Appendf([]byte("reconciled."), "r%d", i) }

// Node key kind bytes.
const (
	kTag      byte = 't'
	kManifest byte = 'm'
	kLayer    byte = 'l'
	kBlob     byte = 'b'
	kLabel    byte = 'a'
	kLegacy   byte = 'g'
	kHolder   byte = 'p' // a repository partition, as a blob's holder (partition.go)
)

// Edge kinds, stored with an in-edge (the value of an in/ entry).
const (
	edgeTag     byte = 'T' // tag → manifest
	edgeChild   byte = 'C' // index → child manifest
	edgeLink    byte = 'L' // manifest → layer link (config or layer)
	edgeContent byte = 'B' // manifest → its own content blob; layer link → blob
	edgeSubject byte = 'S' // subject → referrer
	edgeLabel   byte = 'A' // manifest → label
	edgeLegacy  byte = 'G' // manifest → legacy image; legacy → parent
	edgeData    byte = 'D' // legacy image → storage and derived blobs
	edgeHeld    byte = 'H' // repository partition → blob (digest partitions)
)

var edgeNames = map[byte]string{edgeTag: "tag", edgeChild: "child", edgeLink: "link",
	edgeContent: "content", edgeSubject: "subject", edgeLabel: "label", edgeLegacy: "legacy", edgeData: "data", edgeHeld: "held"}

// History states.
const (
	histPointed byte = 1 // the tag pointed here and has since moved
	histCurrent byte = 2 // the tag points here now
	histDeleted byte = 3 // the tag was deleted while pointing here
)

// ErrCorrupt is returned when the file holds a record this package cannot read.
var ErrCorrupt = errors.New("refcount: corrupt record")

// ErrNewerSchema is returned by Open for a file written by a newer refgc.
var ErrNewerSchema = errors.New("refcount: file has a newer schema")

// Migration upgrades a file from schema version From to From+1 inside one
// write transaction. Register them in migrations.
type Migration struct {
	From  uint64
	Apply func(tx *bolt.Tx) error
}

// migrations is the migration hook: Open runs, in order, every migration
// whose From is at or above the file's version and below SchemaVersion.
var migrations = []Migration{
	// Version 2 adds buckets (created by Open before migrations run) and a
	// trailing field to node records (absent means unknown): nothing to rewrite.
	{From: 1, Apply: func(*bolt.Tx) error { return nil }},
	// Version 3 adds origins/ and a trailing origin to node records (absent
	// means unknown: the node goes to Distribution storage, as before).
	{From: 2, Apply: func(*bolt.Tx) error { return nil }},
	// Version 4 adds the tags/, lifetimes/ and purges/ buckets and the
	// retained and purged flags: a version 3 file has no expiries, no tag
	// in the time machine and no purge, which the empty buckets say. A
	// version 3 build refuses a version 4 file (ErrNewerSchema).
	{From: 3, Apply: func(*bolt.Tx) error { return nil }},
	// Version 5 adds the outbox/ and orphans/ buckets and meta/partition: a version 4
	// file holds the whole registry, which Open records.
	{From: 4, Apply: func(*bolt.Tx) error { return nil }},
	// Version 6 keeps up to inlineHolders in-edges in a node's record
	// (holders.go): a version 5 file has every in-edge as an in/ sub-key
	// and none inline, which version 6 reads as it is. A version 5 build
	// would miss the inline ones, so it refuses the file (ErrNewerSchema).
	// It also writes manifest bodies in binary (body.go) and reads the
	// JSON ones version 5 wrote.
	{From: 5, Apply: func(*bolt.Tx) error { return nil }},
}

func nodeKey(n events.NodeRef) []byte {
	switch n.Kind {
	case events.NodeTag:
		return key2(kTag, n.Repo, n.Name)
	case events.NodeManifest:
		return manifestKey(n.Repo, n.Digest)
	case events.NodeLayer:
		return layerKey(n.Repo, n.Digest)
	case events.NodeBlob:
		return blobKey(n.Digest)
	case events.NodeLabel:
		return key2(kLabel, n.Repo, n.Name)
	case events.NodeLegacy:
		return key2(kLegacy, n.Repo, n.Name)
	}
	return nil
}

func key2(kind byte, repo, name string) []byte {
	b := make([]byte, 0, 2+len(repo)+len(name))
	b = append(b, kind)
	b = append(b, repo...)
	b = append(b, 0)
	return append(b, name...)
}

func keyD(kind byte, repo string, d digest.Digest) []byte {
	b := make([]byte, 0, 2+len(repo)+66)
	b = append(b, kind)
	b = append(b, repo...)
	b = append(b, 0)
	return appendDigest(b, d)
}

func tagKey(repo, tag string) []byte                  { return key2(kTag, repo, tag) }
func manifestKey(repo string, d digest.Digest) []byte { return keyD(kManifest, repo, d) }
func layerKey(repo string, d digest.Digest) []byte    { return keyD(kLayer, repo, d) }
func blobKey(d digest.Digest) []byte                  { return appendDigest(append(make([]byte, 0, 66), kBlob), d) }

// Digests are stored in keys as an algorithm byte and the raw hash: half
// the length of the text form, so more keys fit a page and compare faster.
// A digest of another form (never one that passed validation) is kept as
// text behind digestText and its length.
const digestText byte = 0xFE

var (
	digestAlgs = [...]digest.Algorithm{1: digest.SHA256, 2: digest.SHA384, 3: digest.SHA512}
	digestLens = [...]int{1: 32, 2: 48, 3: 64}
)

func appendDigest(b []byte, d digest.Digest) []byte {
	if strings.Contains(string(d), ":") { // (Algorithm panics without one)
		alg0, enc := d.Algorithm(), d.Encoded()
		for code, alg := range digestAlgs {
			if code == 0 || alg0 != alg || len(enc) != 2*digestLens[code] {
				continue
			}
			n := len(b)
			b = append(b, byte(code))
			b = append(b, make([]byte, digestLens[code])...)
			if _, err := hex.Decode(b[n+1:], []byte(enc)); err == nil {
				return b
			}
			b = b[:n]
		}
	}
	b = append(b, digestText, byte(len(d)))
	return append(b, d...)
}

// digestLen is the length of the encoded digest at the start of b, or -1.
func digestLen(b []byte) int {
	switch {
	case len(b) == 0:
		return -1
	case int(b[0]) < len(digestLens) && b[0] != 0:
		n := 1 + digestLens[b[0]]
		if n > len(b) {
			return -1
		}
		return n
	case b[0] == digestText && len(b) >= 2 && 2+int(b[1]) <= len(b):
		return 2 + int(b[1])
	}
	return -1
}

func decodeDigest(b []byte) (digest.Digest, error) {
	if digestLen(b) != len(b) {
		return "", fmt.Errorf("%w: digest in key", ErrCorrupt)
	}
	if b[0] == digestText {
		return digest.Digest(b[2:]), nil
	}
	return digest.NewDigestFromEncoded(digestAlgs[b[0]], hex.EncodeToString(b[1:])), nil
}

// repoPrefix is the prefix shared by every node of kind in repo.
func repoPrefix(kind byte, repo string) []byte { return key2(kind, repo, "") }

// nodeKeyLen is the length of the node key at the start of k (a record's
// key, or the node part of a sub-key), or -1 if k is malformed.
func nodeKeyLen(k []byte) int {
	if len(k) < 2 {
		return -1
	}
	if k[0] == kBlob {
		if n := digestLen(k[1:]); n > 0 {
			return 1 + n
		}
		return -1
	}
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return -1
	}
	switch k[0] {
	case kManifest, kLayer:
		if n := digestLen(k[i+1:]); n > 0 {
			return i + 1 + n
		}
		return -1
	case kTag, kLabel, kLegacy, kHolder:
		if j := bytes.IndexByte(k[i+1:], 1); j >= 0 {
			return i + 1 + j
		}
		return len(k)
	}
	return -1
}

// parseNodeKey turns a node key back into a NodeRef.
func parseNodeKey(k []byte) (events.NodeRef, error) {
	kind, ok := keyKind(k)
	if !ok || nodeKeyLen(k) != len(k) {
		return events.NodeRef{}, fmt.Errorf("%w: node key %q", ErrCorrupt, k)
	}
	if kind == events.NodeBlob {
		d, err := decodeDigest(k[1:])
		return events.NodeRef{Kind: kind, Digest: d}, err
	}
	i := bytes.IndexByte(k, 0)
	repo, rest := string(k[1:i]), k[i+1:]
	switch kind {
	case events.NodeManifest, events.NodeLayer:
		d, err := decodeDigest(rest)
		return events.NodeRef{Kind: kind, Repo: repo, Digest: d}, err
	case events.NodePartition:
		return events.NodeRef{Kind: kind, Name: string(rest)}, nil
	}
	return events.NodeRef{Kind: kind, Repo: repo, Name: string(rest)}, nil // a tag, a label, a legacy image
}

// keyKind is the kind of a node key, read from its first byte alone;
// false for a byte that names no kind.
func keyKind(k []byte) (events.NodeKind, bool) {
	if len(k) == 0 {
		return "", false
	}
	switch k[0] {
	case kTag:
		return events.NodeTag, true
	case kManifest:
		return events.NodeManifest, true
	case kLayer:
		return events.NodeLayer, true
	case kBlob:
		return events.NodeBlob, true
	case kLabel:
		return events.NodeLabel, true
	case kLegacy:
		return events.NodeLegacy, true
	case kHolder:
		return events.NodePartition, true
	}
	return "", false
}

// Sub-key types: what follows <node key> 0x01.
const (
	subIn       byte = 'i' // <from key>: an incoming edge
	subReferrer byte = 'r' // <referrer key>: a referrer declaring this subject
	subHistory  byte = 'h' // <tag key>: a tag that pointed at this manifest
	subBody     byte = 'j' // the manifest's references, JSON
	subVersion  byte = 'v' // <holder key>: the newest statement applied from it
)

// subKey is <node> 0x01 <typ> <rest>.
func subKey(node []byte, typ byte, rest []byte) []byte {
	k := make([]byte, 0, len(node)+2+len(rest))
	k = append(k, node...)
	k = append(k, 1, typ)
	return append(k, rest...)
}

func subPrefix(node []byte, typ byte) []byte { return subKey(node, typ, nil) }

// isSub reports whether a key of nodes/ is a sub-key rather than a record.
func isSub(k []byte) bool { return nodeKeyLen(k) < len(k) }

// splitSub splits a sub-key into its node key, type and rest.
func splitSub(k []byte) (node []byte, typ byte, rest []byte, err error) {
	i := nodeKeyLen(k)
	if i < 0 || i+1 >= len(k) || k[i] != 1 {
		return nil, 0, nil, fmt.Errorf("%w: sub-key %q", ErrCorrupt, k)
	}
	return k[:i], k[i+1], k[i+2:], nil
}

// forSub calls fn with the rest of every sub-key of node of type typ.
func forSub(c *bolt.Cursor, node []byte, typ byte, fn func(rest, v []byte) error) error {
	prefix := subPrefix(node, typ)
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if err := fn(k[len(prefix):], v); err != nil {
			return err
		}
	}
	return nil
}

func queueKey(at int64, node []byte) []byte {
	k := make([]byte, 8, 8+len(node))
	binary.BigEndian.PutUint64(k, uint64(at))
	return append(k, node...)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func readU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
