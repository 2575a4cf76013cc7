package store

import (
	"context"
	"sync"
)

// fanout runs work with at most n extra goroutines: when every slot is
// taken, do runs the work inline in the caller, which bounds concurrency
// without the deadlock a blocking acquire would risk in recursive work.
// emit serializes the user's callbacks. The first error cancels the rest and
// is what wait returns.
type fanout struct {
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error

	emitMu sync.Mutex
}

func newFanout(ctx context.Context, n int) *fanout {
	if n < 1 {
		n = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	return &fanout{ctx: ctx, cancel: cancel, sem: make(chan struct{}, n)}
}

func (f *fanout) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
		f.cancel()
	}
}

func (f *fanout) failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err != nil
}

// do runs work in a new goroutine if a slot is free, inline otherwise.
func (f *fanout) do(work func(ctx context.Context) error) {
	if f.ctx.Err() != nil {
		f.fail(f.ctx.Err())
		return
	}
	select {
	case f.sem <- struct{}{}:
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-f.sem }()
			if err := work(f.ctx); err != nil {
				f.fail(err)
			}
		}()
	default:
		if err := work(f.ctx); err != nil {
			f.fail(err)
		}
	}
}

// emit calls fn while no other emit runs; its error stops the fan-out.
func (f *fanout) emit(fn func() error) error {
	f.emitMu.Lock()
	defer f.emitMu.Unlock()
	if f.failed() {
		return context.Canceled
	}
	if err := fn(); err != nil {
		f.fail(err)
		return err
	}
	return nil
}

// wait waits for every goroutine and returns the first error.
func (f *fanout) wait() error {
	f.wg.Wait()
	f.cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
