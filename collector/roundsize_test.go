package collector

import (
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
		{"fast storage: the batch", 1024, 8, 3000, 500 * time.Millisecond, 1024},
		{"slow storage: what goes in the round time", 1024, 8, 400, 500 * time.Millisecond, 200},
		{"rate limit", 1024, 8, 20, 500 * time.Millisecond, 10},
		{"never fewer than in flight", 1024, 8, 2, 500 * time.Millisecond, 8},
		{"batch below in flight", 4, 8, 2, 500 * time.Millisecond, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundSize(tc.batch, tc.inFlight, tc.rate, tc.roundTime); got != tc.want {
				t.Errorf("roundSize(%d, %d, %v, %v) = %d, want %d", tc.batch, tc.inFlight, tc.rate, tc.roundTime, got, tc.want)
			}
		})
	}
}
