package eventlog_test

import (
	"testing"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

// TestFollowerGroupCommit holds the first Apply until the whole log is
// published: the batches read meanwhile reach the next Apply merged, each
// at most MaxBatch records, in order and exactly once.
func TestFollowerGroupCommit(t *testing.T) {
	const n, readBatch, maxBatch = 500, 10, 120
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	r := newRecorder()
	release := make(chan struct{})
	var sizes []int
	f := followerFor(t, js, r, func(c *eventlog.FollowerConfig) {
		c.ReadBatch, c.MaxBatch = readBatch, maxBatch
		c.Apply = func(batch []events.Record) error {
			if len(sizes) == 0 {
				<-release
			}
			sizes = append(sizes, len(batch))
			return r.Apply(batch)
		}
	})
	stop := runFollower(t, f)
	publishAll(t, pub, testEvents(0, 1))
	publishAll(t, pub, testEvents(1, n-1))
	close(release)
	if err := f.WaitApplied(ctxT(t, 30*time.Second), n); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.check(t, n)
	merged := false
	for _, s := range sizes {
		if s > maxBatch {
			t.Errorf("an Apply of %d records, over MaxBatch %d", s, maxBatch)
		}
		merged = merged || s > readBatch
	}
	if !merged {
		t.Errorf("no Apply merged read batches: sizes %v", sizes)
	}
}
