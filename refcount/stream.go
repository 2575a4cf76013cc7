package refcount

// The stream identity. The cursor is a sequence of one event stream, and
// only of that one: a stream deleted and created again under the same name
// starts its sequences at 1 again, so a projection at cursor 500 would
// skip the new stream's first 500 events, or apply events that follow a
// history it never saw. The projection therefore records which stream its
// cursor counts in (the event log's StreamID: the name and the creation
// time) and refuses any other.
//
//	meta/
//	  stream → the identity of the stream the cursor counts in (BindStream)
//
// The key is declared here rather than with the others in schema.go.

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// keyStream holds the identity of the stream the cursor counts in.
var keyStream = []byte("stream")

// ErrStreamChanged is returned (wrapped) by BindStream when the projection
// is bound to another stream than the one given: the stream was deleted
// and created again, or the file was built from another log. The
// projection cannot follow that stream: rebuild it. It is
// events.ErrStreamChanged, so that a follower recognises it.
var ErrStreamChanged = events.ErrStreamChanged

// BindStream binds the projection to the stream whose identity is id: it
// records id if no identity is recorded yet, and otherwise returns an error
// wrapping ErrStreamChanged unless id is the one recorded. A file written
// before identities were recorded is bound on its first use.
func (p *Projection) BindStream(id string) error {
	if id == "" {
		return errors.New("refcount: bind to a stream without an identity")
	}
	return p.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		switch have := string(meta.Get(keyStream)); have {
		case id:
			return nil
		case "":
			if err := meta.Put(keyStream, []byte(id)); err != nil {
				return fmt.Errorf("refcount: bind to stream %s: %w", id, err)
			}
			return nil
		default:
			return fmt.Errorf("%w: the projection counts in stream %s, not %s", ErrStreamChanged, have, id)
		}
	})
}

// StreamID returns the identity of the stream the projection is bound to,
// or "" if it is bound to none yet.
func (p *Projection) StreamID() (string, error) {
	var id string
	err := p.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			id = string(b.Get(keyStream))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("refcount: stream identity: %w", err)
	}
	return id, nil
}
