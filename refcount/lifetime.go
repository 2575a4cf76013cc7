package refcount

// A tag's lifetime: its expiry, the time machine and repository purges.
//
// A tag.set may carry an expiry (Quay's lifetime_end). Once it has passed,
// the collector removes the tag (from storage, for Distribution) and says
// so with a Collected event naming the tag. A tag that is deleted, expired,
// purged or found absent enters the time machine for its repository's
// window (Options.TimeMachine, TimeMachineRepos): it is no longer present
// in the registry, but it is still alive and holds its manifest, so that
// `refgc restore REPO:TAG` can bring it back. When the window ends, the
// collector publishes a second Collected event for the tag, which forgets
// it and releases its manifest, at the time the window ended. With no
// window (the default), a removed tag releases its manifest at once, as
// it always did.
//
// A repository.deleted event purges a repository: its present tags expire
// at the event's time (and are removed whatever ExpireTags says), and its
// manifest revisions stated present before it are roots no longer (under
// the keep policy, or unverified: flagPurged) and become collectable after
// the grace counted from the purge. Blobs other repositories link stay. A
// manifest pushed again after the purge is the repository's again; a tag
// whose statement is older than the purge (delivered late) is set expired
// at the purge, as the purge found the others.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Reasons a tag left the registry (TagLife.Reason).
const (
	TagDeleted = "deleted"
	TagExpired = "expired"
	TagPurged  = "purged"
	TagAbsent  = "absent" // the reconciler found it missing from storage
)

// TagLife is what the projection knows of a tag's lifetime: when a present
// tag expires, or since when and until when a removed one is in the time
// machine.
type TagLife struct {
	Repo   string        `json:"repo"`
	Tag    string        `json:"tag"`
	Digest digest.Digest `json:"digest,omitempty"`
	// Expires is when a present tag expires (zero: never).
	Expires time.Time `json:"expires,omitzero"`
	// Purge says the expiry is a repository purge's.
	Purge bool `json:"purge,omitempty"`
	// Removed is when the tag left the registry; Until is when its time
	// machine window ends. Both are zero while the tag is present.
	Removed time.Time `json:"removed,omitzero"`
	Until   time.Time `json:"until,omitzero"`
	Reason  string    `json:"reason,omitempty"`
}

// InTimeMachine reports whether the tag was removed and is recoverable.
func (l TagLife) InTimeMachine() bool { return !l.Removed.IsZero() }

// Lifetime index kinds: the first byte of a lifetimes/ key.
const (
	lifeExpires byte = 'e'
	lifeUntil   byte = 'r'
)

func lifeKey(kind byte, at time.Time, tk []byte) []byte {
	k := make([]byte, 0, 9+len(tk))
	k = append(k, kind)
	k = binary64(k, at.UnixNano())
	return append(k, tk...)
}

func binary64(b []byte, v int64) []byte { return append(b, u64(uint64(v))...) }

// lifeIndex is the lifetimes/ key of a record, or nil.
func (l *TagLife) lifeIndex(tk []byte) []byte {
	switch {
	case l.InTimeMachine():
		return lifeKey(lifeUntil, l.Until, tk)
	case !l.Expires.IsZero():
		return lifeKey(lifeExpires, l.Expires, tk)
	}
	return nil
}

// TimeMachineWindow is how long a tag removed from repo stays recoverable:
// the longest match of Options.TimeMachineRepos (a repository name, or a
// namespace ending in "/"), else Options.TimeMachine.
func (p *Projection) TimeMachineWindow(repo string) time.Duration {
	w, best := p.opts.TimeMachine, -1
	for k, v := range p.opts.TimeMachineRepos {
		if (k == repo || strings.HasSuffix(k, "/") && strings.HasPrefix(repo, k)) && len(k) > best {
			w, best = v, len(k)
		}
	}
	return max(w, 0)
}

func readTagLife(b *bolt.Bucket, tk []byte) (*TagLife, error) {
	raw := b.Get(tk)
	if raw == nil {
		return nil, nil
	}
	var l TagLife
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, fmt.Errorf("%w: tag lifetime %q: %w", ErrCorrupt, tk, err)
	}
	return &l, nil
}

func (t *txn) tagLife(tk []byte) *TagLife {
	l, err := readTagLife(t.tx.Bucket(bucketTags), tk)
	if err != nil {
		t.fail(err)
	}
	return l
}

// setTagLife writes a tag's lifetime (nil removes it) and keeps the
// lifetimes/ index in step.
func (t *txn) setTagLife(tk []byte, l *TagLife) {
	old := t.tagLife(tk)
	if old != nil {
		if ik := old.lifeIndex(tk); ik != nil {
			t.del(t.tx.Bucket(bucketLifetimes), ik)
		}
	}
	if l == nil || (l.Expires.IsZero() && !l.InTimeMachine()) {
		if old != nil {
			t.del(t.tx.Bucket(bucketTags), tk)
		}
		return
	}
	t.putJSON(t.tx.Bucket(bucketTags), tk, l)
	if ik := l.lifeIndex(tk); ik != nil {
		t.put(t.tx.Bucket(bucketLifetimes), ik, nil)
	}
}

// tagTarget is the manifest a tag points at, from its declared edge.
func tagTarget(n *node) []byte {
	for _, e := range n.decl {
		if e.kind == edgeTag {
			return e.to
		}
	}
	return nil
}

// removeTag takes a present tag out of the registry: into the time machine
// when its repository has a window, else gone with its edge.
func (t *txn) removeTag(k []byte, n *node, reason string) {
	ref, err := parseNodeKey(k)
	if err != nil {
		t.fail(err)
		return
	}
	var l *TagLife
	if w := t.p.TimeMachineWindow(ref.Repo); w > 0 && tagTarget(n) != nil {
		l = &TagLife{Repo: ref.Repo, Tag: ref.Name, Removed: time.Unix(0, t.now).UTC(),
			Until: time.Unix(0, t.now).Add(w).UTC(), Reason: reason}
		if m, err := parseNodeKey(tagTarget(n)); err == nil {
			l.Digest = m.Digest
		}
		n.setFlag(flagRetained, true)
	}
	t.setTagLife(k, l)
	t.named(k, n)
	t.setPresent(k, n, false)
}

// deletedUnseen applies the deletion of a tag the projection never saw
// set (its tag.set is late: delivery reordered them). With a window, the
// tag enters the time machine with its target unknown, so that the late
// tag.set, refused as older than the deletion, can name what it holds
// (lateTarget), and its owner is asked about it when the window ends.
func (t *txn) deletedUnseen(k []byte, repo, tag string) {
	w := t.p.TimeMachineWindow(repo)
	if w <= 0 {
		return
	}
	n := t.get(k)
	n.setFlag(flagRetained, true)
	t.setTagLife(k, &TagLife{Repo: repo, Tag: tag, Removed: time.Unix(0, t.now).UTC(),
		Until: time.Unix(0, t.now).Add(w).UTC(), Reason: TagDeleted})
	t.named(k, n)
	t.stated(k, n)
	t.setPresent(k, n, false)
}

// lateTarget applies a tag.set older than the tag's last change to a tag
// in the time machine whose target is unknown (deletedUnseen): the tag
// held that manifest when it was deleted, and holds it until the window
// ends.
func (t *txn) lateTarget(k []byte, repo string, d digest.Digest) {
	if !t.exists(k) {
		return
	}
	l := t.tagLife(k)
	if l == nil || !l.InTimeMachine() || l.Digest != "" {
		return
	}
	n := t.get(k)
	mk := manifestKey(repo, d)
	t.revive(mk)
	t.put(t.nodes, subKey(mk, subHistory, k), []byte{histDeleted})
	t.setDecl(k, n, []edge{{edgeTag, mk}})
	l.Digest = d
	t.setTagLife(k, l)
	t.named(k, n)
}

// releaseTag ends a removed tag's stay in the time machine: it forgets the
// tag and releases its manifest.
func (t *txn) releaseTag(k []byte, n *node) {
	n.setFlag(flagRetained, false)
	t.setTagLife(k, nil)
	t.named(k, n)
	t.setPresent(k, n, false)
}

// collectedTag applies the collector's Collected event for a tag: a
// present tag (its expiry, or its repository's purge, has passed) is
// removed; a tag in the time machine whose window ended is forgotten.
func (t *txn) collectedTag(k []byte, c *events.CollectedRef) {
	if !t.exists(k) {
		return
	}
	n := t.get(k)
	if n.lastSeq > c.AsOf {
		return // set, restored or removed again since the collector looked
	}
	switch l := t.tagLife(k); {
	case n.present():
		reason := TagExpired
		if l != nil && l.Purge {
			reason = TagPurged
		}
		// The collector removed it from storage: a late statement of it
		// heals it, as for an unlinked layer link.
		t.put(t.tx.Bucket(bucketTombs), k, u64(uint64(t.now)))
		t.removeTag(k, n, reason)
	case n.flags&flagRetained != 0:
		t.releaseTag(k, n)
	}
}

// purgeRepository applies repository.deleted (see the file comment).
func (t *txn) purgeRepository(repo string) {
	if t.flush() != nil { // scans read the bucket: write the working set first
		return
	}
	t.put(t.tx.Bucket(bucketPurges), []byte(repo), u64(uint64(t.now)))
	t.purged[repo] = t.now
	for _, kind := range []byte{kTag, kManifest} {
		prefix := repoPrefix(kind, repo)
		var keys [][]byte
		c := t.nodes.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if !isSub(k) {
				keys = append(keys, append([]byte(nil), k...))
			}
		}
		for _, k := range keys {
			n := t.get(k)
			if !n.present() {
				continue
			}
			if kind == kManifest {
				n.setFlag(flagPurged, true)
				t.touch(k, n) // requeued: it is a root no longer
				continue
			}
			l := t.tagLife(k)
			if l == nil {
				l = &TagLife{}
			}
			ref, _ := parseNodeKey(k)
			l.Repo, l.Tag, l.Purge = repo, ref.Name, true
			if at := time.Unix(0, t.now).UTC(); l.Expires.IsZero() || l.Expires.After(at) {
				l.Expires = at
			}
			if m, err := parseNodeKey(tagTarget(n)); err == nil {
				l.Digest = m.Digest
			}
			t.setTagLife(k, l)
			t.named(k, n)
		}
	}
}

// purgedAt is when the repository of a node key was last purged (unix ns;
// 0: never), cached for the transaction.
func (t *txn) purgedAt(k []byte) int64 {
	if t.tx == nil || (k[0] != kManifest && k[0] != kTag) {
		return 0
	}
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return 0
	}
	repo := string(k[1:i])
	if at, ok := t.purged[repo]; ok {
		return at
	}
	at := int64(readU64(t.tx.Bucket(bucketPurges).Get([]byte(repo))))
	if t.purged != nil {
		t.purged[repo] = at
	}
	return at
}

// purgedManifest reports whether a manifest was present when its
// repository was purged, and not pushed since: it is to go.
func (t *txn) purgedManifest(k []byte, n *node) bool {
	return k[0] == kManifest && n.flags&flagPurged != 0
}

// TagDue is a tag whose lifetime needs the collector: an expiry that has
// passed (Release false), or a time machine window that has ended.
type TagDue struct {
	Tag     events.NodeRef `json:"tag"`
	Digest  digest.Digest  `json:"digest,omitempty"`
	At      time.Time      `json:"at"`
	Purge   bool           `json:"purge,omitempty"`
	Release bool           `json:"release,omitempty"`
}

// DueTags returns up to limit tags whose expiry or time machine window
// ended at or before now, earliest first within each kind.
func (p *Projection) DueTags(now time.Time, limit int) ([]TagDue, error) {
	var out []TagDue
	err := p.db.View(func(tx *bolt.Tx) error {
		tags := tx.Bucket(bucketTags)
		for _, kind := range []byte{lifeExpires, lifeUntil} {
			c := tx.Bucket(bucketLifetimes).Cursor()
			for k, _ := c.Seek([]byte{kind}); k != nil && k[0] == kind && len(out) < limit; k, _ = c.Next() {
				if len(k) < 9 || int64(readU64(k[1:9])) > now.UnixNano() {
					break
				}
				tk := k[9:]
				ref, err := parseNodeKey(tk)
				if err != nil {
					return err
				}
				l, err := readTagLife(tags, tk)
				if err != nil || l == nil {
					return err
				}
				d := TagDue{Tag: ref, Digest: l.Digest, Purge: l.Purge, Release: kind == lifeUntil, At: l.Expires}
				if d.Release {
					d.At = l.Until
				}
				out = append(out, d)
			}
		}
		return nil
	})
	return out, err
}

// TagLifeOf returns the lifetime record of a tag, if it has one (an
// expiry, or a stay in the time machine).
func (p *Projection) TagLifeOf(ref events.NodeRef) (l TagLife, ok bool, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		r, err := readTagLife(tx.Bucket(bucketTags), nodeKey(ref))
		if r != nil {
			l, ok = *r, true
		}
		return err
	})
	return l, ok, err
}

// TimeMachine returns the tags in the time machine, of repo or of every
// repository when repo is "".
func (p *Projection) TimeMachine(repo string) ([]TagLife, error) {
	var out []TagLife
	err := p.db.View(func(tx *bolt.Tx) error {
		prefix := []byte{kTag}
		if repo != "" {
			prefix = repoPrefix(kTag, repo)
		}
		c := tx.Bucket(bucketTags).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var l TagLife
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("%w: tag lifetime: %w", ErrCorrupt, err)
			}
			if l.InTimeMachine() {
				out = append(out, l)
			}
		}
		return nil
	})
	return out, err
}

// PurgedAt returns when a repository was last purged (zero: never).
func (p *Projection) PurgedAt(repo string) (time.Time, error) {
	var at int64
	err := p.db.View(func(tx *bolt.Tx) error {
		at = int64(readU64(tx.Bucket(bucketPurges).Get([]byte(repo))))
		return nil
	})
	if at == 0 {
		return time.Time{}, err
	}
	return time.Unix(0, at).UTC(), err
}
