package collector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/internal/prom"
)

type metrics struct {
	deletions    *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	errors       *prometheus.CounterVec
	races        *prometheus.CounterVec
	restores     prometheus.Counter
	passSeconds  prometheus.Histogram
	refused      *prometheus.CounterVec
	heals        *prometheus.CounterVec
	healFailures *prometheus.CounterVec
	healDelay    prometheus.Histogram
	watermarkLag prometheus.Gauge
	quietSources prometheus.Gauge
	paused       *prometheus.GaugeVec
	checkSeconds prometheus.Histogram
	dirsRemoved  prometheus.Counter
	// barrierFailures counts purge rounds a digest partition's barrier held back.
	barrierFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deletions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_deletions_total",
			Help: "Objects removed from storage, by node kind and operation (unlink or purge)."}, []string{"kind", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_reclaimed_bytes_total",
			Help: "Bytes of data purged, by node kind."}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_storage_errors_total",
			Help: "Storage operations that failed (retried on the next pass), by node kind."}, []string{"kind"}),
		races: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_races_total",
			Help: "Removals undone because the object was referenced again meanwhile, by node kind."}, []string{"kind"}),
		restores: prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_collector_restores_total",
			Help: "Manifests restored from the trash."}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refgc_collector_pass_duration_seconds",
			Help: "Duration of collector passes.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_refused_total",
			Help: "Candidates not collected, by reason: what the storage check found unexplained, or the projection's re-check."},
			[]string{"reason"}),
		heals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_heals_total",
			Help: "Unlinked objects re-linked because a late event proved them live, by node kind."}, []string{"kind"}),
		healFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refgc_collector_heal_failures_total",
			Help: "Objects a late event proved live whose data was already purged (lost), by node kind."}, []string{"kind"}),
		healDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refgc_collector_heal_delay_seconds",
			Help:    "Time between an unlink and its heal: how long a live object was unavailable.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 12)}),
		watermarkLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_collector_watermark_lag_seconds",
			Help: "How far the delivery watermark that bounds eligibility is behind the clock."}),
		quietSources: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refgc_collector_quiet_sources",
			Help: "Registry instances from which nothing arrived for the quiet period: they no longer bound collection."}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "refgc_collector_pauses",
			Help: "Pauses in force (repositories, or the whole registry), by reason; collection there waits for a reconcile."},
			[]string{"reason"}),
	}
	m.checkSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refgc_collector_check_duration_seconds",
		Help: "Duration of the storage check of one round.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)})
	m.dirsRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_collector_empty_dirs_removed_total",
		Help: "Empty directories removed from filesystem storage after unlinks and purges."})
	m.dirsRemoved = prom.Register(reg, m.dirsRemoved)
	m.barrierFailures = prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_collector_barrier_failures_total",
		Help: "Purge rounds of a digest partition that purged nothing because a repository partition had not published its statements in time."}))
	m.deletions = prom.Register(reg, m.deletions)
	m.bytes = prom.Register(reg, m.bytes)
	m.errors = prom.Register(reg, m.errors)
	m.races = prom.Register(reg, m.races)
	m.restores = prom.Register(reg, m.restores)
	m.passSeconds = prom.Register(reg, m.passSeconds)
	m.refused = prom.Register(reg, m.refused)
	m.heals = prom.Register(reg, m.heals)
	m.healFailures = prom.Register(reg, m.healFailures)
	m.healDelay = prom.Register(reg, m.healDelay)
	m.watermarkLag = prom.Register(reg, m.watermarkLag)
	m.quietSources = prom.Register(reg, m.quietSources)
	m.paused = prom.Register(reg, m.paused)
	m.checkSeconds = prom.Register(reg, m.checkSeconds)
	for _, r := range RefuseReasons {
		m.refused.WithLabelValues(r)
	}
	return m
}
