package collector

import (
	"math"
	"testing"
	"time"
)

func TestRoundSize(t *testing.T) {
	for _, tc := range []struct {
		name            string
		batch, inFlight int
		rate            float64
		roundTime       time.Duration
		want            int
	}{
		{"no rate yet", 1024, 8, 0, time.Second, firstRoundSize},
		{"no rate yet, small batch", 100, 8, 0, time.Second, 100},
		{"not a number", 1024, 8, math.NaN(), time.Second, firstRoundSize},
		{"fast storage: the batch", 1024, 8, 3000, 500 * time.Millisecond, 1024},
		{"infinite rate: the batch", 1024, 8, math.Inf(1), 500 * time.Millisecond, 1024},
		{"no overflow", 1024, 8, 1e12, time.Duration(math.MaxInt64), 1024},
		{"slow storage: what goes in the round time", 1024, 8, 400, 500 * time.Millisecond, 200},
		{"rate limit: never fewer than the floor", 1024, 8, 20, 500 * time.Millisecond, minRoundSize},
		{"more in flight than the floor", 1024, 100, 20, 500 * time.Millisecond, 100},
		{"batch below the floor", 16, 8, 2, 500 * time.Millisecond, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundSize(tc.batch, tc.inFlight, tc.rate, tc.roundTime); got != tc.want {
				t.Errorf("roundSize(%d, %d, %v, %v) = %d, want %d", tc.batch, tc.inFlight, tc.rate, tc.roundTime, got, tc.want)
			}
		})
	}
}

func TestMeasure(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rateLimit float64
		n         int
		d         time.Duration
		want      float64 // the unlink rate kept (the purge rate stays 0)
	}{
		{"a full round", 0, 800, time.Second, 800},
		{"fewer than in flight: latency, not rate", 0, 4, time.Second, 0},
		{"no time", 0, 800, 0, 0},
		{"capped by the rate limit", 100, 800, time.Second, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Collector{cfg: Config{Concurrency: 8, RateLimit: tc.rateLimit}}
			c.measure(0, tc.n, tc.d)
			if c.rate != [2]float64{tc.want, 0} {
				t.Errorf("rates %v, want [%v 0]", c.rate, tc.want)
			}
		})
	}
}
