package reconcile

import (
	"sync"
	"sync/atomic"
	"time"
)

// Progress is how far the running pass of a Reconciler is: a reconcile,
// verify or rebuild walk of storage, or a rebuild's replay of the log.
// Storage gives no totals in advance, so these are counts of what was seen;
// callers estimate a ratio against what the projection holds.
type Progress struct {
	// Running is false between passes; the counts are then the last pass's.
	Running bool `json:"running"`
	// Pass is "reconcile", "verify" or "rebuild".
	Pass    string    `json:"pass,omitempty"`
	Started time.Time `json:"started,omitzero"`
	// Repositories, Revisions and Blobs count what the walk has seen.
	Repositories int64 `json:"repositories"`
	Revisions    int64 `json:"revisions"`
	Blobs        int64 `json:"blobs"`
	// Replayed counts the events a rebuild from the log has applied.
	Replayed int64 `json:"replayed,omitempty"`
}

// progress is the live counterpart of Progress.
type progress struct {
	mu                        sync.Mutex
	running                   bool
	pass                      string
	started                   time.Time
	repos, revs, blobs, repld atomic.Int64
}

func (p *progress) start(pass string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running, p.pass, p.started = true, pass, time.Now()
	for _, c := range []*atomic.Int64{&p.repos, &p.revs, &p.blobs, &p.repld} {
		c.Store(0)
	}
}

func (p *progress) stop() {
	p.mu.Lock()
	p.running = false
	p.mu.Unlock()
}

// saw counts what a walk saw (the keys of Drift.Scanned).
func (p *progress) saw(what string, n int) {
	switch what {
	case "repositories":
		p.repos.Add(int64(n))
	case "revisions":
		p.revs.Add(int64(n))
	case "blobs":
		p.blobs.Add(int64(n))
	}
}

func (p *progress) snapshot() Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Progress{Running: p.running, Pass: p.pass, Started: p.started, Repositories: p.repos.Load(),
		Revisions: p.revs.Load(), Blobs: p.blobs.Load(), Replayed: p.repld.Load()}
}

// Progress reports how far the running pass is. Safe to call at any time.
func (r *Reconciler) Progress() Progress { return r.prog.snapshot() }
