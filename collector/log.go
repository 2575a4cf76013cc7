package collector

import (
	"context"
	"fmt"
	"sync"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// DirectLog is a Log that applies events straight into a projection,
// numbering them itself. It is for a collector that owns its projection
// outright, with no event log to share: dry-run simulations on a snapshot,
// and tests of the collector's logic. A daemon uses the JetStream log.
type DirectLog struct {
	P  *refcount.Projection
	mu sync.Mutex
}

// Publish applies the events at the next sequences.
func (l *DirectLog) Publish(_ context.Context, evs []events.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur, err := l.P.Cursor()
	if err != nil {
		return err
	}
	recs := make([]events.Record, len(evs))
	for i, e := range evs {
		recs[i] = events.Record{Seq: cur + uint64(i) + 1, Event: e}
	}
	res, err := l.P.Apply(recs)
	if err != nil {
		return err
	}
	if len(res.Invalid) > 0 {
		return fmt.Errorf("collector: event %s refused: %w", res.Invalid[0].ID, res.Invalid[0].Err)
	}
	return nil
}

// CatchUp returns the cursor: a direct log is always caught up.
func (l *DirectLog) CatchUp(context.Context) (uint64, error) { return l.P.Cursor() }
