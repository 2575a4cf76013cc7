package refcount

// Origins: which event source stated a node present. A registry that
// publishes refgc's events itself (the Quay model) owns what it states in
// its own database, and the collector asks that owner to delete it; the
// node record keeps the source as a small interned id, so a Distribution
// registry's nodes pay a byte or two for it.

import (
	"bytes"

	bolt "go.etcd.io/bbolt"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// Key prefixes of origins/.
const (
	originByName byte = 'n'
	originByID   byte = 'i'
)

// stated records that the current event's source stated the node present.
func (t *txn) stated(k []byte, n *node) {
	if t.evSource == "" {
		return
	}
	if id := t.originID(t.evSource); id != 0 && n.origin != id {
		n.origin = id
		t.touch(k, n)
	}
}

// originID interns a source name, giving the next id to a new one.
func (t *txn) originID(source string) uint64 {
	if id, ok := t.origins[source]; ok {
		return id
	}
	b := t.tx.Bucket(bucketOrigins)
	nk := append([]byte{originByName}, source...)
	id := readU64(b.Get(nk))
	if id == 0 {
		next, err := b.NextSequence()
		if err != nil {
			t.fail(err)
			return 0
		}
		id = next
		t.put(b, nk, u64(id))
		t.put(b, append([]byte{originByID}, u64(id)...), []byte(source))
	}
	if t.origins == nil {
		t.origins = map[string]uint64{}
	}
	t.origins[source] = id
	return id
}

// originNames resolves interned ids within one read transaction.
type originNames struct {
	b     *bolt.Bucket
	cache map[uint64]string
}

func newOriginNames(tx *bolt.Tx) *originNames {
	return &originNames{b: tx.Bucket(bucketOrigins), cache: map[uint64]string{}}
}

func (o *originNames) name(id uint64) string {
	if id == 0 || o.b == nil {
		return ""
	}
	if s, ok := o.cache[id]; ok {
		return s
	}
	s := string(o.b.Get(append([]byte{originByID}, u64(id)...)))
	o.cache[id] = s
	return s
}

// labelStampKey orders the attaches and detaches of one label on one manifest.
func labelStampKey(lk, mk []byte) []byte { return subKey(lk, 's', mk) }

// labelNewer reports whether an attach or detach at the current time may
// change the label on the manifest (last writer wins by event time), and
// records its time if so.
func (t *txn) labelNewer(lk, mk []byte) bool {
	b := t.tx.Bucket(bucketStamps)
	k := labelStampKey(lk, mk)
	if prev := int64(readU64(b.Get(k))); prev > t.now {
		return false
	}
	t.put(b, k, u64(uint64(t.now)))
	return true
}

// legacyDerived adds derived storage to a legacy image. The statement
// implies the image exists; its parent and storage come with its own
// event, which keeps the derived edges added here.
func (t *txn) legacyDerived(l *events.LegacyImage) {
	k := key2(kLegacy, l.Repo, l.ID)
	n := t.get(k)
	decl := append([]edge(nil), n.decl...)
	for _, d := range l.Derived {
		t.blobPresent(d, 0, false)
		decl = appendUnique(decl, edge{edgeData, blobKey(d)})
	}
	t.setDecl(k, n, decl)
	t.named(k, n)
	t.stated(k, n)
	t.setPresent(k, n, true)
}

// keepDerived returns decl with the data edges of old that decl lacks:
// derived storage stated by its own events stays when the image is stated
// again.
func keepDerived(decl, old []edge, storage digest.Digest) []edge {
	sk := blobKey(storage)
	for _, e := range old {
		if e.kind == edgeData && !bytes.Equal(e.to, sk) {
			decl = appendUnique(decl, e)
		}
	}
	return decl
}
