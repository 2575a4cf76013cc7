// Package prom is refgc's one way of registering Prometheus collectors,
// used by the event log, the webhook, the collector, the reconciler and
// the daemon alike.
package prom

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns it; if reg already holds a
// collector with the same description it returns that one instead, so that
// several instances (two followers, a webhook per test) can share a
// registry. A nil reg registers nothing. Any other failure is a programming
// error (two metrics of one name with different labels or help) and panics.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("refgc: register metric: %v", err))
	}
	return c
}
