package refcount

import (
	"bytes"
	"encoding/hex"
	"fmt"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// ForEach calls fn for every node the projection holds, in key order, in
// one read transaction: what Dump writes, as values. An error from fn stops
// the iteration and is returned as is. fn must not write to the projection
// (it would wait for the read transaction to end).
func (p *Projection) ForEach(fn func(NodeInfo) error) error {
	return p.forEachInfo(fn)
}

// ForEachIn is ForEach limited to the nodes of one kind in one repository,
// or of every repository when repo is "" (kind NodeBlob ignores repo:
// blobs are global), without their holders: as for Lookup, Holders is nil
// (so are they in ForEachBlobIn, ForEachBlobSpan and ForEachExcept, which
// walks use too). Its transaction is as
// short as the repository is large, which lets a caller compare storage
// with the projection one repository at a time.
func (p *Projection) ForEachIn(kind events.NodeKind, repo string, fn func(NodeInfo) error) error {
	b, ok := keyOfKind(kind)
	if !ok {
		return fmt.Errorf("refcount: unknown node kind %q", kind)
	}
	prefix := []byte{b}
	if kind != events.NodeBlob && repo != "" {
		prefix = repoPrefix(b, repo)
	}
	return p.forEachPrefix(prefix, fn)
}

// ForEachBlobIn is ForEach limited to the blobs of one algorithm whose
// encoded digest starts with hexPrefix, an even number of hex digits
// (Distribution keeps blob data in directories named by the first two), in
// digest order.
func (p *Projection) ForEachBlobIn(alg digest.Algorithm, hexPrefix string, fn func(NodeInfo) error) error {
	return p.ForEachBlobSpan(alg, hexPrefix, "", "", fn)
}

// ForEachBlobSpan is ForEachBlobIn limited to the encoded digests e with
// from <= e < to, compared as strings (from empty: from the prefix's first;
// to empty: to its last). from and to are even numbers of hex digits, a
// whole encoded digest or a shorter bound ("ab40" holds back "ab3f…" and
// lets "ab40…" through). Its transaction is as short as the span is large,
// which lets a caller compare a listing of storage with the projection a
// bounded number of blobs at a time.
func (p *Projection) ForEachBlobSpan(alg digest.Algorithm, hexPrefix, from, to string, fn func(NodeInfo) error) error {
	var raw [3][]byte
	for i, h := range []string{hexPrefix, from, to} {
		b, err := hex.DecodeString(h)
		if err != nil {
			return fmt.Errorf("refcount: blob prefix or bound %q: %w", h, err)
		}
		raw[i] = b
	}
	for code, a := range digestAlgs {
		if code == 0 || a != alg {
			continue
		}
		base := []byte{kBlob, byte(code)}
		prefix := append(bytes.Clone(base), raw[0]...)
		start := prefix
		if b := append(bytes.Clone(base), raw[1]...); bytes.Compare(b, start) > 0 {
			start = b
		}
		var end []byte
		if to != "" {
			end = append(bytes.Clone(base), raw[2]...)
		}
		return p.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketNodes).Cursor()
			for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix) && (end == nil || bytes.Compare(k, end) < 0); k, v = c.Next() {
				if err := p.visit(tx, k, v, fn); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return nil // no key of this package has that algorithm in raw form
}

// ForEachExcept is ForEachIn(kind, "", fn) without the repositories that
// skip names: their nodes are passed over by seeking past them, unread.
// A reconcile pass uses it for what its walk of each repository has not
// judged already. Not for blobs, which have no repository.
func (p *Projection) ForEachExcept(kind events.NodeKind, skip func(repo string) bool, fn func(NodeInfo) error) error {
	b, ok := keyOfKind(kind)
	if !ok || kind == events.NodeBlob {
		return fmt.Errorf("refcount: no repositories in node kind %q", kind)
	}
	return p.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketNodes).Cursor()
		for k, v := c.Seek([]byte{b}); k != nil && k[0] == b; {
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return fmt.Errorf("%w: node key %q", ErrCorrupt, k)
			}
			if skip(string(k[1:i])) {
				// Every key of the repository starts with kind, repo, 0x00.
				k, v = c.Seek(append(bytes.Clone(k[:i]), 1))
				continue
			}
			if err := p.visit(tx, k, v, fn); err != nil {
				return err
			}
			k, v = c.Next()
		}
		return nil
	})
}

// forEachPrefix calls fn for the node records whose key starts with prefix.
func (p *Projection) forEachPrefix(prefix []byte, fn func(NodeInfo) error) error {
	return p.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketNodes).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := p.visit(tx, k, v, fn); err != nil {
				return err
			}
		}
		return nil
	})
}

// visit calls fn for the node record k, v (nothing for a sub-key), without
// its holders.
func (p *Projection) visit(tx *bolt.Tx, k, v []byte, fn func(NodeInfo) error) error {
	if isSub(k) {
		return nil
	}
	n, err := decodeNode(v)
	if err != nil {
		return err
	}
	ni, err := p.info(tx, k, n, false)
	if err != nil {
		return err
	}
	return fn(ni)
}

// keyOfKind is the key kind byte of a node kind (the inverse of kindOfKey).
func keyOfKind(kind events.NodeKind) (byte, bool) {
	for _, b := range []byte{kTag, kManifest, kLayer, kBlob, kLabel, kLegacy} {
		if kindOfKey(b) == kind {
			return b, true
		}
	}
	return 0, false
}
