package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
)

// gauges are the projection-wide figures, refreshed every StatsInterval
// from refcount Stats (counts kept in step by every write: one read,
// whatever the size of the projection).
type gauges struct {
	d          *Daemon
	nodes      *prometheus.GaugeVec
	present    *prometheus.GaugeVec
	queued     *prometheus.GaugeVec
	queuedSize *prometheus.GaugeVec
	intents    prometheus.Gauge
	trash      prometheus.Gauge
	cursor     prometheus.Gauge
	refreshed  prometheus.Gauge
	// objects is what a walk of storage will count, from the last refresh
	// (the estimate of PassProgress).
	objects atomic.Int64
}

func newGauges(reg prometheus.Registerer, d *Daemon) *gauges {
	g := &gauges{
		d: d,
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_projection_nodes",
			Help: "Nodes in the projection, by kind."}, []string{"kind"}),
		present: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_projection_present_nodes",
			Help: "Nodes present in storage, by kind."}, []string{"kind"}),
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_candidates",
			Help: "Unheld nodes queued for collection (eligible now or later), by kind."}, []string{"kind"}),
		queuedSize: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_candidates_bytes",
			Help: "Size of the queued nodes, by kind."}, []string{"kind"}),
		intents: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_collector_intents",
			Help: "Collector intents recorded and not yet dropped."}),
		trash: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_trash_entries",
			Help: "Unlinked manifest revisions that can still be restored."}),
		cursor: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_projection_cursor",
			Help: "Last event log sequence applied to the projection."}),
		refreshed: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_projection_stats_timestamp_seconds",
			Help: "When the projection gauges were last refreshed."}),
	}
	for _, c := range []**prometheus.GaugeVec{&g.nodes, &g.present, &g.queued, &g.queuedSize} {
		*c = prom.Register(reg, *c)
	}
	for _, c := range []*prometheus.Gauge{&g.intents, &g.trash, &g.cursor, &g.refreshed} {
		*c = prom.Register(reg, *c)
	}
	prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_event_log_connected",
		Help: "1 while the NATS connection is up."}, func() float64 {
		if d.nc.Status() == nats.CONNECTED {
			return 1
		}
		return 0
	}))
	prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_collection_halted",
		Help: "1 once the follower stopped for good (a gap in the log, or an event it cannot read): nothing is collected until the projection is rebuilt."},
		func() float64 {
			if d.halted.Load() != nil {
				return 1
			}
			return 0
		}))
	prom.Register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_ready",
		Help: "1 while /readyz answers 200."}, func() float64 {
		if d.Ready() == nil {
			return 1
		}
		return 0
	}))
	d.registerProgress(reg)
	return g
}

func (g *gauges) refresh() {
	st, err := g.d.proj.Stats()
	if err != nil {
		g.d.log.Warn("projection stats", "err", err)
		return
	}
	for _, k := range nodeKinds {
		g.nodes.WithLabelValues(string(k)).Set(float64(st.Nodes[k]))
		g.present.WithLabelValues(string(k)).Set(float64(st.Present[k]))
		g.queued.WithLabelValues(string(k)).Set(float64(st.Queued[k]))
		g.queuedSize.WithLabelValues(string(k)).Set(float64(st.QueuedSize[k]))
	}
	g.objects.Store(progressObjects(st.Nodes))
	g.intents.Set(float64(st.Intents))
	g.trash.Set(float64(st.Trash))
	g.cursor.Set(float64(st.Cursor))
	g.refreshed.SetToCurrentTime()
}

func (g *gauges) loop(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 15 * time.Second
	}
	g.refresh()
	every(ctx, interval, g.refresh)
}

// every calls fn every interval until ctx is done (the daemon's
// periodic loops: gauges, reconcile passes, snapshots).
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

var nodeKinds = []events.NodeKind{events.NodeTag, events.NodeManifest, events.NodeLayer, events.NodeBlob,
	events.NodeLabel, events.NodeLegacy}
