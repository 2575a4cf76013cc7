package refcount

import (
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
)

// benchEvents makes a realistic mix: per image, a config and three layer
// pushes (one layer shared by all images of the repository), the manifest
// pushed by tag, two pulls; every tenth image moves a tag and deletes one.
func benchEvents(n int) []events.Event {
	out := make([]events.Event, 0, n)
	for i := 0; len(out) < n; i++ {
		repo := fmt.Sprintf("team%d/app%d", i%50, i%500)
		shared := fmt.Sprintf("base-%d", i%500)
		blobs := []string{fmt.Sprintf("cfg-%d", i), shared, fmt.Sprintf("l1-%d", i), fmt.Sprintf("l2-%d", i)}
		for _, b := range blobs {
			out = append(out, pushB(repo, b))
		}
		m := fmt.Sprintf("man-%d", i)
		out = append(out, pushM(repo, m, fmt.Sprintf("v%d", i%20), blobs, nil, ""), touch(repo, m), touch(repo, blobs[1]))
		if i%10 == 9 {
			out = append(out, setT(repo, "latest", m), delT(repo, fmt.Sprintf("v%d", (i+1)%20)))
		}
	}
	return out[:n]
}

var benchWarm = flag.Bool("apply.warm", false, "benchmarks: Apply and RawPuts start from a file that holds 64,000 earlier events of the mix")

var rawWithout = flag.String("rawputs.without", "", "BenchmarkRawPuts: leave these writes out of the replay, comma-separated: a bucket (queue, stamps) or a sub-key type of nodes/ (nodes/i, nodes/j, nodes/h)")

// rawLeftOut reports whether -rawputs.without leaves the write of key k to
// bucket out of the replay: what those writes cost is the difference.
func rawLeftOut(bucket, k []byte) bool {
	if *rawWithout == "" {
		return false
	}
	what := string(bucket)
	if what == string(bucketNodes) && isSub(k) {
		what += "/" + string(k[nodeKeyLen(k)+1])
	}
	return slices.Contains(strings.Split(*rawWithout, ","), what)
}

func benchOpen(b *testing.B) *Projection {
	b.Helper()
	p, err := Open(filepath.Join(b.TempDir(), "refs.db"), Options{}) // fsync on
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// toRecords numbers evs as the log would and validates them, as the
// follower's decoding does (it marks what passed Valid, and Apply does
// not check it again).
func toRecords(evs []events.Event, seq *uint64) []events.Record {
	recs := make([]events.Record, len(evs))
	for i, e := range evs {
		*seq++
		e.ID = fmt.Sprintf("e%d", *seq)
		e.Time = t0.Add(time.Duration(*seq) * time.Millisecond)
		recs[i] = events.Record{Seq: *seq, Event: e, Valid: e.Validate() == nil}
	}
	return recs
}

// pullHeavy makes the traffic of a registry that is mostly read: per pushed
// image (as in benchEvents), eight pulls of recently pushed content.
func pullHeavy(n int) []events.Event {
	push := benchEvents(n)
	out := make([]events.Event, 0, n)
	for i := 0; len(out) < n; i++ {
		e := push[i%len(push)]
		out = append(out, e)
		if e.Kind == events.ManifestPushed {
			m := e.Manifest
			for j := 0; j < 8 && len(out) < n; j++ {
				d := m.Digest
				if j%2 == 1 {
					d = m.Blobs[j%len(m.Blobs)].Digest
				}
				out = append(out, events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: m.Repo, Digest: d}})
			}
		}
	}
	return out
}

// BenchmarkApplyPullHeavy is BenchmarkApply/batch=1000 on pull-heavy traffic.
func BenchmarkApplyPullHeavy(b *testing.B) {
	benchApply(b, benchOpen(b), pullHeavy, 1000)
}

// benchApply applies b.N batches of size events of mix, every batch new
// events (mix(n) makes the first n of them: images not pushed before, in
// the repositories of the ones before). With -apply.warm the projection
// first holds warmEvents earlier events of the same mix, applied in
// batches of size, untimed. The records of a batch (ids, times, sequences,
// validation) are made outside the timer and outside the CPU time
// reported: in the daemon they come decoded and validated from the log
// (the follower does both, beside Apply), and what is measured is Apply.
func benchApply(b *testing.B, p *Projection, mix func(n int) []events.Event, size int) {
	b.Helper()
	warm := benchWarmEvents()
	evs := mix(warm + b.N*size)
	var seq uint64
	for j := 0; j < warm; j += size {
		if _, err := p.Apply(toRecords(evs[j:j+size], &seq)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	cpu0, w0 := regtest.CPUTime(b), writes(p)
	for i := 0; i < b.N; i++ {
		j := warm + i*size
		b.StopTimer()
		c := regtest.CPUTime(b)
		recs := toRecords(evs[j:j+size], &seq)
		cpu0 += regtest.CPUTime(b) - c
		b.StartTimer()
		if _, err := p.Apply(recs); err != nil {
			b.Fatal(err)
		}
	}
	reportRates(b, b.N*size, cpu0)
	b.ReportMetric(float64(writes(p)-w0)/float64(b.N), "pages/commit")
}

// warmEvents is how many events -apply.warm applies before the timer
// starts: a multiple of every batch size benchmarked.
const warmEvents = 64_000

func benchWarmEvents() int {
	if *benchWarm {
		return warmEvents
	}
	return 0
}

// reportRates reports events per second of wall time and per second of
// the process's CPU time (user and system, every goroutine: GC included).
// The second is what to compare when other work shares the machine.
func reportRates(b *testing.B, events int, cpu0 time.Duration) {
	b.Helper()
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(events)/(regtest.CPUTime(b)-cpu0).Seconds(), "events/cpu-s")
}

// BenchmarkApply applies batches of 1 to 32,000 events (from 4,000 on,
// what the follower's group commit merges under load, up to its MaxBatch
// of 16,000, and one size beyond it), one fsync'd commit per batch;
// events/s is the figure of merit. Every batch is new images (never one applied
// before), pushed into an empty file, or with -apply.warm into a
// projection that already holds 64,000 earlier events of the mix: the
// repositories, their shared base layers and their tags, as a registry's
// does.
func BenchmarkApply(b *testing.B) {
	for _, size := range []int{1, 100, 1000, 4000, 8000, 16000, 32000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			benchApply(b, benchOpen(b), benchEvents, size)
		})
	}
}

// BenchmarkRawPuts is the baseline: the exact puts and deletes that Apply
// makes for BenchmarkApply's batches of 1,000, 8,000, 16,000 and 32,000
// events, replayed in order into the same buckets of a fresh bbolt file
// with the projection's options, in one fsync'd transaction each (its
// reads are Apply's own work, and not replayed). Its ratio to BenchmarkApply at the same batch
// size is how close the projection runs to its storage's limit; its own
// rate is that limit for this schema: the library doing nothing but the
// projection's writes. With -apply.warm, the file first holds the puts of
// the same 64,000 earlier events, as BenchmarkApply's does. With
// -rawputs.without, the replay leaves some kinds of write out (in the
// warm-up too): the rate gained is what those writes cost the library.
func BenchmarkRawPuts(b *testing.B) {
	for _, size := range []int{1000, 8000, 16000, 32000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) { benchRawPuts(b, size) })
	}
}

func benchRawPuts(b *testing.B, size int) {
	type put struct {
		bucket, k, v []byte
		del          bool
	}
	var batches [][]put
	{
		p := benchOpen(b)
		evs := benchEvents(benchWarmEvents() + b.N*size)
		var seq uint64
		for i := 0; i < len(evs)/size; i++ {
			var cur []put
			// Bucket pointers differ per transaction: resolve names inside Apply's own.
			writeHook = func(bk *bolt.Bucket, k, v []byte, del bool) {
				if name := bucketName(bk); !rawLeftOut(name, k) {
					cur = append(cur, put{name, append([]byte(nil), k...), append([]byte(nil), v...), del})
				}
			}
			if _, err := p.Apply(toRecords(evs[i*size:(i+1)*size], &seq)); err != nil {
				b.Fatal(err)
			}
			batches = append(batches, cur)
		}
		writeHook = nil
	}
	opts := Options{}
	opts.defaults()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, boltOptions(opts))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, nm := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(nm); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	replay := func(batch []put) {
		if err := db.Update(func(tx *bolt.Tx) error {
			for _, p := range batch {
				b := tx.Bucket(p.bucket)
				if p.del {
					if err := b.Delete(p.k); err != nil {
						return err
					}
				} else if err := b.Put(p.k, p.v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	warm := benchWarmEvents() / size
	for _, batch := range batches[:warm] {
		replay(batch)
	}
	puts, dels := 0, 0
	for _, batch := range batches[warm:] {
		for _, p := range batch {
			if p.del {
				dels++
			} else {
				puts++
			}
		}
	}
	b.ResetTimer()
	cpu0, w0 := regtest.CPUTime(b), dbWrites(db)
	for _, batch := range batches[warm:] {
		replay(batch)
	}
	reportRates(b, b.N*size, cpu0)
	b.ReportMetric(float64(dbWrites(db)-w0)/float64(b.N), "pages/commit")
	b.ReportMetric(float64(puts)/float64(b.N), "puts/batch")
	b.ReportMetric(float64(dels)/float64(b.N), "deletes/batch")
}

// bucketName finds which of the schema's buckets bk is, by identity within
// its transaction.
func bucketName(bk *bolt.Bucket) []byte {
	tx := bk.Tx()
	for _, nm := range allBuckets {
		if tx.Bucket(nm) == bk {
			return nm
		}
	}
	return nil
}

func writes(p *Projection) int64 { return dbWrites(p.db) }

func dbWrites(db *bolt.DB) int64 {
	s := db.Stats()
	return s.TxStats.GetWrite()
}

// BenchmarkApplyNoSync is BenchmarkApply/batch=1000 without fsync: the
// difference shows how much of Apply is the disk and how much the CPU.
func BenchmarkApplyNoSync(b *testing.B) {
	const size = 1000
	p, err := Open(filepath.Join(b.TempDir(), "refs.db"), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	benchApply(b, p, benchEvents, size)
}
