package refcount

import (
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Fresh reports whether a pull (events.Touched) of d in repo at time at
// would change nothing: the blob and the revision or layer link of repo
// that d names exist, and every one of them that exists has a lease the
// pull would leave as it is (touchFresh). The webhook drops such pulls
// instead of publishing them (distribution.PullFilter).
//
// Leases only grow, so an answer from a projection behind the log errs
// only towards publishing. A node an event in flight creates is not known
// here; requiring both the blob and a repository node keeps a pull that
// arrives before its push (from another registry instance) published.
func (p *Projection) Fresh(repo string, d digest.Digest, at time.Time) (bool, error) {
	now := at.UnixNano()
	var fresh bool
	err := p.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		inRepo := false
		for _, k := range [][]byte{manifestKey(repo, d), layerKey(repo, d), blobKey(d)} {
			v := b.Get(k)
			if v == nil {
				continue
			}
			n, err := decodeNode(v)
			if err != nil {
				return err
			}
			if !touchFresh(n, now, p.opts.Grace) {
				return nil
			}
			if k[0] != kBlob {
				inRepo = true
			} else {
				fresh = inRepo
			}
		}
		return nil
	})
	return fresh, err
}

// touchFresh is the rule by which a pull leaves a node's lease as it is:
// pulls are most of a registry's traffic, so a lease with at least 7/8 of
// the grace still to run is not extended, and pulls of hot content write
// nothing.
func touchFresh(n *node, now int64, grace time.Duration) bool {
	return n.lease-int64(grace)/8*7 >= now
}
