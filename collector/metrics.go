package collector

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	deletions   *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	errors      *prometheus.CounterVec
	races       *prometheus.CounterVec
	restores    prometheus.Counter
	passSeconds prometheus.Histogram
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
	}
	if reg != nil {
		reg.MustRegister(m.deletions, m.bytes, m.errors, m.races, m.restores, m.passSeconds)
	}
	return m
}
