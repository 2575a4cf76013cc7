package refcount

import (
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// SnapshotInfo is where a snapshot stands in the event log.
type SnapshotInfo struct {
	// Cursor is the last stream sequence the snapshot has applied.
	Cursor uint64
	// Stream is the identity of the stream the cursor counts in ("" if
	// bound to none).
	Stream string
	// Size is the snapshot's size in bytes.
	Size int64
}

// Snapshot writes a consistent copy of the projection's file to w, as of
// one read transaction, with the cursor and stream identity that copy
// holds: opened as a projection, it follows the same stream from Cursor+1
// and ends in the same state as this one does. Writers are not blocked.
func (p *Projection) Snapshot(w io.Writer) (SnapshotInfo, error) {
	var info SnapshotInfo
	err := p.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			info.Cursor = readU64(b.Get(keyCursor))
			info.Stream = string(b.Get(keyStream))
		}
		n, err := tx.WriteTo(w)
		info.Size = n
		return err
	})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("refcount: snapshot: %w", err)
	}
	return info, nil
}
