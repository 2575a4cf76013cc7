package regtest

import (
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// Heap is what a benchmark's operation held, above what the process held
// (after a GC) when it began.
type Heap struct {
	// Objects is the peak of the heap's objects, garbage not yet swept
	// included: it follows the GC's target, which grows with everything
	// else the process holds.
	Objects uint64
	// Live is the peak of the live heap as each GC cycle marked it: the
	// memory the operation really held at once, whatever else the process
	// holds.
	Live uint64
}

// PeakHeap is Peaks(fn).Objects.
func PeakHeap(fn func()) uint64 { return Peaks(fn).Objects }

// Peaks samples the heap every millisecond while fn runs and returns its
// peaks above those after a GC at the start.
func Peaks(fn func()) Heap {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	var (
		mu    sync.Mutex
		start Heap
		peak  Heap
	)
	read := func() {
		metrics.Read(samples)
		mu.Lock()
		defer mu.Unlock()
		peak.Objects = max(peak.Objects, samples[0].Value.Uint64())
		peak.Live = max(peak.Live, samples[1].Value.Uint64())
	}
	read()
	start = peak
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			read()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(stop)
	wg.Wait()
	read()
	return Heap{Objects: peak.Objects - start.Objects, Live: peak.Live - start.Live}
}
