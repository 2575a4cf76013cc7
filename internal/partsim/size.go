package partsim

import "strconv"

// The byte model of the refcount projection: the length of every key and
// value that refcount writes for a node, an edge or a tag, following the
// layout documented in refcount's package doc (schema.go, node.go). The
// calibration test applies generated events to a real projection and checks
// these figures against the bbolt file.

// Fixed widths of the projection's encoding.
const (
	digestKeyLen = 1 + 32 // an algorithm byte and the raw sha256 hash
	blobKeyLen   = 1 + digestKeyLen
	timeVarint   = 9 // a unix-nanosecond time of this century, zigzag varint
	stampLen     = 8 // stamps/<tag key> → uint64
	originLen    = 1 // the interned id of a registry instance, uvarint (< 128 instances)
	// leafOverhead is bbolt's leaf element header, paid once per key.
	leafOverhead = 16
	// versionLen is what a cross-partition in-edge adds to its value in the
	// partitioned design: the uvarint stream sequence of the statement.
	versionLen = 5
)

// Media types the generated manifests carry.
const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtIndex    = "application/vnd.oci.image.index.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

func decLen(v int64) int { return len(strconv.FormatInt(v, 10)) }

// Key lengths.
func repoKeyLen(repoLen, nameLen int) int { return 1 + repoLen + 1 + nameLen }
func repoDigestKeyLen(repoLen int) int    { return 1 + repoLen + 1 + digestKeyLen }

// subKeyLen is <node key> 0x01 <type> <rest>.
func subKeyLen(nodeLen, restLen int) int { return nodeLen + 2 + restLen }

// inlineHolders is how many in-edges refcount keeps in the record of the
// node they point at (refcount's holders.go); the rest are in/ sub-keys.
const inlineHolders = 8

// inEdgeLen is what the ordinal-th in-edge of a node (from 0, in the order
// they came) adds to the projection, from a holder key of length from to a
// node key of length to: its bytes in the node's record while the record
// has room (and, for the first, the count of inline edges), else an in/
// sub-key with its kind and leaf header. Records always carry the
// trailing fields the inline edges follow (every node has an origin).
func inEdgeLen(ordinal, to, from int) int {
	if ordinal < inlineHolders {
		n := 1 + uvarintLen(uint64(from)) + from
		if ordinal == 0 {
			n++
		}
		return n
	}
	return subKeyLen(to, from) + 1 + leafOverhead
}

// inEdgesLen is inEdgeLen summed over count in-edges of equal width.
func inEdgesLen(count, to, from int) int {
	n := 0
	for o := range count {
		n += inEdgeLen(o, to, from)
	}
	return n
}

// subHolders is how many of count in-edges are in/ sub-keys.
func subHolders(count int) int64 { return int64(max(0, count-inlineHolders)) }

// record is what the length of an encoded node record (refcount's
// node.encode) depends on.
type record struct {
	count     uint64
	lease     bool // a lease was ever set
	zero      bool // zeroSince set: the node is unheld
	queued    bool
	seqLen    int
	size      int64
	mediaType int // length of the media type
	heard     bool
	// origin: the record names the source that stated it present (every
	// node an ingested event states: tags, revisions, links, blobs).
	origin bool
	// declared edges: how many, and their encoded length
	declN, declLen int
}

// edge declares an outgoing edge to a key of length to.
func (r *record) edge(to int) {
	r.declN++
	r.declLen += 1 + uvarintLen(uint64(to)) + to
}

// blobMediaType is the media type length of a manifest's i-th blob: the
// config first, then layers.
func blobMediaType(i int) int {
	if i == 0 {
		return len(mtConfig)
	}
	return len(mtLayer)
}

func (r *record) len() int {
	n := 1 + uvarintLen(r.count)
	n += pick(r.lease, timeVarint, 1) + pick(r.zero, timeVarint, 1) + pick(r.queued, timeVarint, 1)
	n += r.seqLen + varintLen(r.size)
	n += uvarintLen(uint64(r.mediaType)) + r.mediaType
	n += uvarintLen(uint64(r.declN)) + r.declLen
	if r.heard || r.origin { // trailing fields: heard is written when either is set
		n += pick(r.heard, timeVarint, 1)
	}
	if r.origin {
		n += originLen
	}
	return n
}

func pick(c bool, a, b int) int {
	if c {
		return a
	}
	return b
}

// descLen is the length of an events.Descriptor in a manifest's binary
// body: the digest as in keys, the size, and the media type as one byte
// (every media type the generator uses has a code of its own).
func descLen(size int64) int { return digestKeyLen + varintLen(size) + 1 }

// body accumulates the length of a manifest's binary body, which refcount
// keeps under <manifest key> 0x01 'j' (refcount's body.go).
type body struct {
	n        int
	blobs    int
	children int
}

// newBody starts a body: its version and flags bytes, media type, size,
// an empty legacy id, and the two list counts.
func newBody(size int64) body { return body{n: 2 + 1 + varintLen(size) + 1 + 1 + 1} }

func (b *body) blob(size int64) { b.item(&b.blobs, size) }

func (b *body) child(size int64) { b.item(&b.children, size) }

// item adds a descriptor to the list whose count is n.
func (b *body) item(n *int, size int64) {
	b.n += uvarintLen(uint64(*n+1)) - uvarintLen(uint64(*n))
	*n++
	b.n += descLen(size)
}

func (b *body) subject(size int64) { b.n += descLen(size) }
