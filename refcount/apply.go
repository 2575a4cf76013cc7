package refcount

import (
	"bytes"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// TrashEntry is an unlinked manifest whose data has not been purged: what
// Restore needs to bring it back.
type TrashEntry struct {
	Node       events.NodeRef  `json:"node"`
	Manifest   events.Manifest `json:"manifest"`
	Tags       []string        `json:"tags,omitempty"` // tags deleted while pointing at it
	UnlinkedAt time.Time       `json:"unlinkedAt"`
}

// apply folds one valid event into the working set.
func (t *txn) apply(seq uint64, e *events.Event) error {
	t.seq = seq
	t.now = e.Time.UnixNano()
	t.received = e.Received.UTC()
	t.evSource = e.Source
	if !e.Received.IsZero() && e.Source != "" && e.Kind != events.Refused {
		// (A refused notification may not say which instance sent it:
		// its pause stands for it.)
		t.delivered(e)
	}
	if !t.p.opts.Partition.takes(e) {
		return t.err
	}
	if t.p.opts.Partition.Role == RoleDigests && e.Repository() != "" && e.Kind != events.Refused {
		t.mentioned(e) // a repository's event: its partition states it
		return t.err
	}
	switch e.Kind {
	case events.ManifestPushed:
		t.manifestPushed(e.Manifest)
	case events.TagSet:
		t.tagSet(e.Tag.Repo, e.Tag.Name, e.Tag.Digest, e.Tag.Expires)
	case events.TagDeleted:
		t.tagDeleted(e.Tag.Repo, e.Tag.Name)
	case events.DigestDeleted:
		t.digestDeleted(e.Ref.Repo, e.Ref.Digest)
	case events.BlobPushed, events.BlobMounted:
		t.blobLinked(e.Blob.Repo, e.Blob.Digest, e.Blob.Size)
	case events.BlobObserved:
		if e.Blob.Repo != "" {
			t.blobLinked(e.Blob.Repo, e.Blob.Digest, e.Blob.Size)
		} else {
			t.blobPresent(e.Blob.Digest, e.Blob.Size, true)
			t.orphan(e.Blob.Digest)
		}
	case events.Touched:
		t.touched(e.Ref.Repo, e.Ref.Digest)
	case events.RepositoryDeleted:
		t.purgeRepository(e.Repo.Name)
	case events.LabelAttached:
		t.label(e.Label, true)
	case events.LabelDetached:
		t.label(e.Label, false)
	case events.LegacyImageCreated:
		t.legacyCreated(e.Legacy)
	case events.LegacyDerived:
		t.legacyDerived(e.Legacy)
	case events.ObservedAbsent:
		t.observedAbsent(e.Absent)
	case events.Collected:
		t.collected(e.Collected, e.Time)
	case events.Healed:
		t.healed(e.Collected)
	case events.Refused:
		if e.Refused.Reason == events.RefusedSourceSilent {
			t.silenced(e.Source)
		}
		if e.Refused.Reason != events.RefusedUnauthorized {
			t.pause(e.Refused.Repo, "refused_"+e.Refused.Reason)
		}
	case events.Reconciled:
		switch t.p.opts.Partition.Role {
		case RoleDigests:
			t.reconciledPartition(e.Reconcile)
		case RoleRepos:
			t.reconciled(e.Reconcile)
			t.restateHolds(e.Reconcile)
		default:
			t.reconciled(e.Reconcile)
		}
	case events.BlobHeld:
		t.holding(e.Held)
	}
	return t.err
}

func (t *txn) manifestPushed(m *events.Manifest) {
	k := manifestKey(m.Repo, m.Digest)
	t.revive(k)
	n := t.get(k)
	decl := make([]edge, 0, len(m.Blobs)+len(m.Children)+2)
	decl = append(decl, edge{edgeContent, blobKey(m.Digest)})
	t.blobPresent(m.Digest, m.Size, false)
	for _, b := range m.Blobs {
		lk := layerKey(m.Repo, b.Digest)
		// The registry accepted the manifest, so its blobs are linked in
		// the repository and their data exists.
		t.blobLinkedNoLease(lk, m.Repo, b.Digest, b.Size)
		decl = appendUnique(decl, edge{edgeLink, lk})
	}
	for _, c := range m.Children {
		ck := manifestKey(m.Repo, c.Digest)
		t.revive(ck) // an index is only whole with its children linked
		decl = appendUnique(decl, edge{edgeChild, ck})
	}
	if m.Subject != nil {
		decl = appendUnique(decl, edge{edgeSubject, manifestKey(m.Repo, m.Subject.Digest)})
	}
	if m.Legacy != "" {
		decl = appendUnique(decl, edge{edgeLegacy, key2(kLegacy, m.Repo, m.Legacy)})
	}
	for _, e := range n.decl { // labels are declared by their own events
		if e.kind == edgeLabel {
			decl = append(decl, e)
		}
	}
	n.size, n.mediaType = m.Size, m.MediaType
	n.heard = t.now
	n.setFlag(flagPinned, m.Unverified)
	t.stated(k, n)
	n.setFlag(flagPurged, false) // pushed again: its repository's purge is behind it
	t.put(t.nodes, subKey(k, subBody, nil), encodeBody(m))
	t.setDecl(k, n, decl)
	t.lease(k, n)
	t.setPresent(k, n, true)
	if m.Tag != "" {
		t.tagSet(m.Repo, m.Tag, m.Digest, m.TagExpires)
	}
}

func appendUnique(es []edge, e edge) []edge {
	if hasEdge(es, e) {
		return es
	}
	return append(es, e)
}

func (t *txn) tagSet(repo, tag string, d digest.Digest, expires time.Time) {
	k := tagKey(repo, tag)
	if !t.tagNewer(k) {
		t.lateTarget(k, repo, d)
		return
	}
	t.revive(k) // a tag the collector removed, stated again: re-link it
	var life *TagLife
	if !expires.IsZero() {
		life = &TagLife{Repo: repo, Tag: tag, Digest: d, Expires: expires.UTC()}
	}
	if p := t.purgedAt(k); p != 0 && t.now < p {
		// A late statement of a tag set before its repository's purge:
		// the purge ended it, as it ended the tags it found.
		at := time.Unix(0, p).UTC()
		if life == nil {
			life = &TagLife{Repo: repo, Tag: tag, Digest: d}
		}
		if life.Expires.IsZero() || life.Expires.After(at) {
			life.Expires = at
		}
		life.Purge = true
	}
	t.setTagLife(k, life)
	mk := manifestKey(repo, d)
	t.revive(mk)
	n := t.get(k)
	for _, e := range n.decl {
		if e.kind == edgeTag && !bytes.Equal(e.to, mk) {
			t.put(t.nodes, subKey(e.to, subHistory, k), []byte{histPointed})
		}
	}
	t.put(t.nodes, subKey(mk, subHistory, k), []byte{histCurrent})
	t.setDecl(k, n, []edge{{edgeTag, mk}})
	n.setFlag(flagRetained, false) // back from the time machine, if it was there
	t.named(k, n)
	t.stated(k, n)
	t.setPresent(k, n, true)
}

func (t *txn) tagDeleted(repo, tag string) {
	k := tagKey(repo, tag)
	if !t.tagNewer(k) {
		return
	}
	if !t.exists(k) {
		t.deletedUnseen(k, repo, tag)
		return
	}
	t.bury(k)
	n := t.get(k)
	if !n.present() {
		return // already out of the registry (in the time machine)
	}
	for _, e := range n.decl {
		if e.kind == edgeTag {
			t.put(t.nodes, subKey(e.to, subHistory, k), []byte{histDeleted})
		}
	}
	t.removeTag(k, n, TagDeleted)
}

// digestDeleted resolves a delete by digest against the state: a manifest
// revision if the repository has one, else a layer link.
func (t *txn) digestDeleted(repo string, d digest.Digest) {
	for _, k := range [][]byte{manifestKey(repo, d), layerKey(repo, d)} {
		t.bury(k)
		if !t.exists(k) {
			continue
		}
		if n := t.get(k); n.present() {
			t.named(k, n)
			t.setPresent(k, n, false)
			return
		}
	}
}

// blobLinked records a repository layer link and its blob, both leased.
func (t *txn) blobLinked(repo string, d digest.Digest, size int64) {
	lk := layerKey(repo, d)
	t.blobLinkedNoLease(lk, repo, d, size)
	t.lease(lk, t.get(lk))
	t.blobPresent(d, size, true)
}

func (t *txn) blobLinkedNoLease(lk []byte, repo string, d digest.Digest, size int64) {
	t.revive(lk)
	n := t.get(lk)
	n.heard = t.now
	if len(n.decl) == 0 {
		t.setDecl(lk, n, []edge{{edgeContent, blobKey(d)}})
	}
	if size > 0 {
		n.size = size
	}
	t.named(lk, n)
	t.stated(lk, n)
	t.setPresent(lk, n, true)
	t.blobPresent(d, size, false)
}

func (t *txn) blobPresent(d digest.Digest, size int64, leased bool) {
	k := blobKey(d)
	n := t.get(k)
	if size > 0 {
		n.size = size
	}
	if leased {
		t.lease(k, n)
	} else {
		t.named(k, n)
	}
	if t.p.opts.Partition.Role == RoleRepos {
		return // blob data is the digest partitions': a copy lives while held
	}
	t.stated(k, n)
	t.setPresent(k, n, true)
}

// touched extends the lease of whatever the digest names in the repository
// and of its blob: a pull, or the HEAD of an upload that the registry
// deduplicated, protects it from an imminent purge.
func (t *txn) touched(repo string, d digest.Digest) {
	for _, k := range [][]byte{manifestKey(repo, d), layerKey(repo, d), blobKey(d)} {
		if !t.exists(k) && !(k[0] == kBlob && t.p.opts.Partition.Role == RoleRepos) {
			// (A repository partition states the lease of a blob it no
			// longer holds to its digest partition: it may cancel a purge.)
			continue
		}
		n := t.get(k)
		// observedAbsent ignores leased nodes, so the sequence a skipped
		// pull would have recorded is not needed.
		if touchFresh(n, t.now, t.p.opts.Grace) {
			continue
		}
		t.lease(k, n)
	}
}

func (t *txn) label(l *events.Label, attach bool) {
	lk := key2(kLabel, l.Repo, l.ID)
	mk := manifestKey(l.Repo, l.Digest)
	e := edge{edgeLabel, lk}
	if attach { // the label exists, whatever the order of its changes
		n := t.get(lk)
		t.lease(lk, n)
		t.stated(lk, n)
		t.setPresent(lk, n, true)
	}
	if !t.labelNewer(lk, mk) {
		return // older than the last change of the label on the manifest
	}
	if !t.exists(mk) {
		return
	}
	m := t.get(mk)
	decl := make([]edge, 0, len(m.decl)+1)
	for _, x := range m.decl {
		if !(x.kind == e.kind && bytes.Equal(x.to, e.to)) {
			decl = append(decl, x)
		}
	}
	if attach {
		decl = append(decl, e)
	}
	t.setDecl(mk, m, decl)
	t.named(mk, m)
}

func (t *txn) legacyCreated(l *events.LegacyImage) {
	k := key2(kLegacy, l.Repo, l.ID)
	n := t.get(k)
	var decl []edge
	if l.Parent != "" {
		decl = append(decl, edge{edgeLegacy, key2(kLegacy, l.Repo, l.Parent)})
	}
	for _, d := range append([]digest.Digest{l.Storage}, l.Derived...) {
		t.blobPresent(d, 0, false)
		decl = appendUnique(decl, edge{edgeData, blobKey(d)})
	}
	t.setDecl(k, n, keepDerived(decl, n.decl, l.Storage))
	t.lease(k, n)
	t.stated(k, n)
	t.setPresent(k, n, true)
}

// observedAbsent applies the reconciler's finding that a node is not in
// storage, unless an event named the node after the walk began or its
// lease still runs.
func (t *txn) observedAbsent(o *events.Observation) {
	k := nodeKey(o.Node)
	if !t.exists(k) {
		return
	}
	n := t.get(k)
	if n.lastSeq > o.AsOf || !n.present() || n.lease > t.now {
		return
	}
	if k[0] == kTag {
		t.removeTag(k, n, TagAbsent)
		return
	}
	t.named(k, n)
	t.setPresent(k, n, false)
}

// collected commits the collector's removal of a node from storage, unless
// the node was named by an event after the collector's re-check (AsOf) or
// is held again: then the removal raced with a new reference, the node
// stays, and the collector restores what it unlinked.
func (t *txn) collected(c *events.CollectedRef, at time.Time) {
	k := nodeKey(c.Node)
	if k[0] == kTag {
		t.collectedTag(k, c)
	} else {
		t.collectedNode(k, c, at)
	}
	t.settleIntent(k, c.Intent)
}

// settleIntent drops the intent a Collected event completes once the node
// is no longer present: what recovery would conclude of it after a crash
// (the removal is committed), done in the transaction that commits it, so
// a round pays no transaction of its own to drop it. The intent of a
// removal that raced stays: the collector restores the node, then drops
// it. Intents are this projection's own; another instance's id is absent.
func (t *txn) settleIntent(k []byte, id string) {
	if id == "" || (t.exists(k) && t.get(k).present()) {
		return
	}
	b := t.tx.Bucket(bucketIntents)
	if b.Get([]byte(id)) == nil {
		return
	}
	t.delta.intents--
	t.del(b, []byte(id))
}

// collectedNode is collected for a node other than a tag.
func (t *txn) collectedNode(k []byte, c *events.CollectedRef, at time.Time) {
	if !t.exists(k) {
		return
	}
	n := t.get(k)
	if n.racedSince(c.AsOf) {
		return
	}
	switch k[0] {
	case kManifest:
		t.trash(k, c.Node, at)
	case kLayer:
		t.put(t.tx.Bucket(bucketTombs), k, u64(uint64(at.UnixNano())))
	}
	t.named(k, n)
	t.setPresent(k, n, false)
}

// trash records an unlinked manifest for Restore and drops its tag history.
func (t *txn) trash(k []byte, ref events.NodeRef, at time.Time) {
	entry := TrashEntry{Node: ref, UnlinkedAt: at.UTC()}
	if raw := t.nodes.Get(subKey(k, subBody, nil)); raw != nil {
		m, err := decodeBody(k, raw)
		if err != nil {
			t.fail(err)
			return
		}
		entry.Manifest = m
	}
	var drop [][]byte
	err := forSub(t.nodes.Cursor(), k, subHistory, func(tk, v []byte) error {
		drop = append(drop, subKey(k, subHistory, tk))
		if len(v) == 1 && v[0] == histDeleted {
			if tr, err := parseNodeKey(tk); err == nil {
				entry.Tags = append(entry.Tags, tr.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.fail(err)
		return
	}
	for _, hk := range drop {
		t.del(t.nodes, hk)
	}
	if t.tx.Bucket(bucketTrash).Get(k) == nil {
		t.delta.trash++
	}
	t.putJSON(t.tx.Bucket(bucketTrash), k, entry)
}
