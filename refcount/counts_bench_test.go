package refcount

import (
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/internal/regtest"
)

// BenchmarkStats reads the projection's counts at two sizes: "stats" is
// Stats as the daemon's gauges call it (meta/counts, kept in step by every
// write), "scan" the baseline in the same run, the same figures counted by
// reading the whole file as Stats did before. The cost of "stats" should
// not grow with the projection; "scan" grows linearly.
func BenchmarkStats(b *testing.B) {
	for _, events := range []int{10_000, 100_000} {
		p := benchFilled(b, events)
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		total := 0
		for _, n := range st.Nodes {
			total += n
		}
		b.Run(fmt.Sprintf("stats/nodes=%d", total), func(b *testing.B) {
			for b.Loop() {
				if _, err := p.Stats(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("scan/nodes=%d", total), func(b *testing.B) {
			for b.Loop() {
				if err := p.db.View(func(tx *bolt.Tx) error {
					_, err := scanCounts(tx)
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
		p.Close()
	}
}

// BenchmarkCheck recounts projections of two sizes with Check (streamed in
// key order) and, as the baseline in the same run, with the map-based
// recount it replaced (checkMaps, kept in the tests as its oracle):
// time per recount and the peak live heap while it runs.
func BenchmarkCheck(b *testing.B) {
	for _, events := range []int{10_000, 100_000} {
		p := benchFilled(b, events)
		for _, c := range []struct {
			name  string
			check func() ([]Mismatch, error)
		}{{"streamed", p.Check}, {"maps", p.checkMaps}} {
			b.Run(fmt.Sprintf("%s/events=%d", c.name, events), func(b *testing.B) {
				var peak uint64
				for b.Loop() {
					peak = max(peak, regtest.PeakHeap(func() {
						if ms, err := c.check(); err != nil || len(ms) > 0 {
							b.Fatalf("check: %v %v", ms, err)
						}
					}))
				}
				b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
			})
		}
		p.Close()
	}
}

// benchFilled returns a projection (without fsync) into which events of
// the benchmark mix were applied in batches of 1,000.
func benchFilled(b *testing.B, events int) *Projection {
	b.Helper()
	p, err := Open(filepath.Join(b.TempDir(), "refs.db"), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	evs := benchEvents(events)
	var seq uint64
	for i := 0; i < len(evs); i += 1000 {
		if _, err := p.Apply(toRecords(evs[i:min(i+1000, len(evs))], &seq)); err != nil {
			b.Fatal(err)
		}
	}
	return p
}
