package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
)

// PassProgress is how far a long pass is: a reconcile, verify or rebuild
// walk of storage, or a rebuild's replay of the log. Ratio is estimated
// against what the projection holds (its manifests and blobs, or its
// cursor for a replay); it is 0 while nothing gives an estimate (the first
// reconcile of an empty projection), and capped below 1 until the pass ends.
type PassProgress struct {
	reconcile.Progress
	Ratio float64 `json:"ratio"`
	// Expected is the estimate Ratio is taken against (0: none).
	Expected int64 `json:"expected"`
}

// FollowerProgress is how far the projection is behind the log: during
// the first catch-up after a start, Applied/(Applied+Lag) of the way.
type FollowerProgress struct {
	Applied uint64  `json:"applied"`
	Lag     uint64  `json:"lag"`
	Ratio   float64 `json:"ratio"`
}

// PassProgress reports the running or last long pass, or false when no
// reconciler runs here (no storage).
func (d *Daemon) PassProgress() (PassProgress, bool) {
	if d.rec == nil {
		return PassProgress{}, false
	}
	pp := PassProgress{Progress: d.rec.Progress()}
	done := pp.Revisions + pp.Blobs
	pp.Expected = d.gauges.objects.Load()
	if pp.Replayed > 0 {
		done, pp.Expected = pp.Replayed, int64(d.fol.Applied())
	}
	switch {
	case !pp.Running:
		pp.Ratio = 1
	case pp.Expected > 0:
		pp.Ratio = min(float64(done)/float64(pp.Expected), 0.99)
	}
	return pp, true
}

// FollowerProgress reports how far the projection is behind the log.
func (d *Daemon) FollowerProgress() FollowerProgress {
	fp := FollowerProgress{Applied: d.fol.Applied(), Lag: d.fol.Lag()}
	fp.Ratio = 1
	if total := fp.Applied + fp.Lag; total > 0 {
		fp.Ratio = float64(fp.Applied) / float64(total)
	}
	return fp
}

// registerProgress exposes PassProgress as metrics.
func (d *Daemon) registerProgress(reg prometheus.Registerer) {
	pass := func(f func(PassProgress) float64) func() float64 {
		return func() float64 {
			pp, ok := d.PassProgress()
			if !ok {
				return 0
			}
			return f(pp)
		}
	}
	prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_reconcile_progress_ratio",
		Help: "Estimated share done of the running reconcile, verify or rebuild pass (1 between passes, 0 when it cannot be estimated)."},
		pass(func(pp PassProgress) float64 { return pp.Ratio })))
	prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_reconcile_running",
		Help: "1 while a reconcile, verify or rebuild pass runs."},
		pass(func(pp PassProgress) float64 {
			if pp.Running {
				return 1
			}
			return 0
		})))
	for _, k := range []struct {
		kind string
		n    func(PassProgress) int64
	}{
		{"repositories", func(pp PassProgress) int64 { return pp.Repositories }},
		{"revisions", func(pp PassProgress) int64 { return pp.Revisions }},
		{"blobs", func(pp PassProgress) int64 { return pp.Blobs }},
		{"events", func(pp PassProgress) int64 { return pp.Replayed }},
	} {
		prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_reconcile_progress_objects",
			Help:        "What the running (or last) long pass has seen so far, by kind (events: replayed by a rebuild).",
			ConstLabels: prometheus.Labels{"kind": k.kind}},
			pass(func(pp PassProgress) float64 { return float64(k.n(pp)) })))
	}
}

// progressObjects is what a walk of storage counts: manifests and blobs.
func progressObjects(st map[events.NodeKind]int) int64 {
	return int64(st[events.NodeManifest] + st[events.NodeBlob])
}
