package store

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/internal/prom"
)

// Backoff defaults: the first pause after a throttled request, and the
// longest. Object stores ask for exponential backoff with jitter and
// recover within seconds to minutes.
const (
	DefaultBackoffInitial = 200 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
)

// throttleCodes are the error codes object stores answer when a client
// sends more requests than they take: S3 (SlowDown), S3-compatible stores
// and other AWS services, GCS (rateLimitExceeded), Azure (ServerBusy).
var throttleCodes = []string{"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
	"TooManyRequests", "TooManyRequestsException", "rateLimitExceeded", "userRateLimitExceeded", "ServerBusy"}

// IsThrottled reports whether err says that the storage backend refuses
// requests for their rate (HTTP 429 or 503, or one of the backends'
// throttling codes), so the request should be retried later. It looks
// through wrapped errors and the storage drivers' error envelopes, which
// do not unwrap.
func IsThrottled(err error) bool {
	for _, e := range errorChain(err) {
		if c, ok := e.(interface{ Code() string }); ok && slices.Contains(throttleCodes, c.Code()) {
			return true
		}
		if s, ok := e.(interface{ StatusCode() int }); ok && (s.StatusCode() == 429 || s.StatusCode() == 503) {
			return true
		}
	}
	return false
}

// errorChain flattens err: its wraps, and the Detail and Errs of the
// storage drivers' envelopes.
func errorChain(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		for e != nil && len(out) < 64 {
			out = append(out, e)
			switch v := e.(type) {
			case storagedriver.Error:
				e = v.Detail
			case *storagedriver.Error:
				e = v.Detail
			case storagedriver.Errors:
				for _, x := range v.Errs {
					walk(x)
				}
				return
			case interface{ Unwrap() []error }:
				for _, x := range v.Unwrap() {
					walk(x)
				}
				return
			default:
				e = errors.Unwrap(e)
			}
		}
	}
	walk(err)
	return out
}

// Backoff is how a Driver slows down when the backend throttles it: every
// storage call made through the Driver waits while a pause is in force; a
// throttled call starts (or lengthens) the pause, exponentially with full
// jitter from Initial up to Max, and is retried until it succeeds, fails
// otherwise, or its context ends. One throttled call thus slows every
// call in flight, not only its own: the rate falls as the backend asks.
// A success shortens the next pause again.
type Backoff struct {
	// Initial is the first pause (DefaultBackoffInitial).
	Initial time.Duration
	// Max bounds a pause (DefaultBackoffMax).
	Max time.Duration
	// Now and Sleep are the clock (time.Now, and a timer that ends early
	// with the context's error).
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
}

// WithBackoff replaces the backoff on throttling.
func WithBackoff(b Backoff) Option { return func(s *Driver) { s.backoff = b } }

// WithRegisterer registers the store's metrics with reg.
func WithRegisterer(reg prometheus.Registerer) Option { return func(s *Driver) { s.reg = reg } }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// throttle is the shared state of one Driver's backoff.
type throttle struct {
	b         Backoff
	mu        sync.Mutex
	level     int       // throttled calls since the last success, capped
	until     time.Time // no call starts before this
	throttled prometheus.Counter
	paused    prometheus.Counter
}

func newThrottle(b Backoff, reg prometheus.Registerer) *throttle {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max < b.Initial {
		b.Max = max(DefaultBackoffMax, b.Initial)
	}
	if b.Now == nil {
		b.Now = time.Now
	}
	if b.Sleep == nil {
		b.Sleep = sleepCtx
	}
	return &throttle{b: b,
		throttled: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_store_throttled_total",
			Help: "Storage requests the backend refused for their rate (429, 503, SlowDown); each was retried after a pause."})),
		paused: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_store_backoff_seconds_total",
			Help: "Time storage calls spent waiting for a throttling pause to end."})),
	}
}

// wait blocks while a pause is in force.
func (t *throttle) wait(ctx context.Context) error {
	for {
		t.mu.Lock()
		d := t.until.Sub(t.b.Now())
		t.mu.Unlock()
		if d <= 0 {
			return ctx.Err()
		}
		t.paused.Add(d.Seconds())
		if err := t.b.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

func (t *throttle) observe(err error) (retry bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil || !IsThrottled(err) {
		if err == nil && t.level > 0 {
			t.level--
		}
		return false
	}
	t.throttled.Inc()
	ceiling := t.b.Initial << min(t.level, 30)
	if ceiling <= 0 || ceiling > t.b.Max {
		ceiling = t.b.Max
	} else {
		t.level++
	}
	pause := t.b.Initial/2 + rand.N(ceiling-t.b.Initial/2+1)
	if until := t.b.Now().Add(pause); until.After(t.until) {
		t.until = until
	}
	return true
}

// do runs op until it is not throttled.
func (t *throttle) do(ctx context.Context, op func() error) error {
	for {
		if err := t.wait(ctx); err != nil {
			return err
		}
		err := op()
		if !t.observe(err) {
			return err
		}
	}
}

// backoffDriver is a storage driver whose calls back off while the
// backend throttles them.
type backoffDriver struct {
	storagedriver.StorageDriver
	t *throttle
}

func (b *backoffDriver) GetContent(ctx context.Context, p string) (out []byte, err error) {
	err = b.t.do(ctx, func() error { out, err = b.StorageDriver.GetContent(ctx, p); return err })
	return out, err
}

func (b *backoffDriver) PutContent(ctx context.Context, p string, content []byte) error {
	return b.t.do(ctx, func() error { return b.StorageDriver.PutContent(ctx, p, content) })
}

func (b *backoffDriver) Reader(ctx context.Context, p string, offset int64) (out io.ReadCloser, err error) {
	err = b.t.do(ctx, func() error { out, err = b.StorageDriver.Reader(ctx, p, offset); return err })
	return out, err
}

func (b *backoffDriver) Stat(ctx context.Context, p string) (out storagedriver.FileInfo, err error) {
	err = b.t.do(ctx, func() error { out, err = b.StorageDriver.Stat(ctx, p); return err })
	return out, err
}

func (b *backoffDriver) List(ctx context.Context, p string) (out []string, err error) {
	err = b.t.do(ctx, func() error { out, err = b.StorageDriver.List(ctx, p); return err })
	return out, err
}

func (b *backoffDriver) Move(ctx context.Context, from, to string) error {
	return b.t.do(ctx, func() error { return b.StorageDriver.Move(ctx, from, to) })
}

func (b *backoffDriver) Delete(ctx context.Context, p string) error {
	return b.t.do(ctx, func() error { return b.StorageDriver.Delete(ctx, p) })
}

// Walk restarts a throttled walk, passing over what the callback already
// saw (and what lies under a directory it skipped): the drivers promise no
// order that would let it resume from a position.
func (b *backoffDriver) Walk(ctx context.Context, from string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	seen := map[string]struct{}{}
	var skipped []string
	return b.t.do(ctx, func() error {
		return b.StorageDriver.Walk(ctx, from, func(fi storagedriver.FileInfo) error {
			p := fi.Path()
			if _, ok := seen[p]; ok {
				return nil
			}
			for _, dir := range skipped {
				if strings.HasPrefix(p, dir+"/") {
					return nil
				}
			}
			err := f(fi)
			switch {
			case err == nil:
				seen[p] = struct{}{}
			case errors.Is(err, storagedriver.ErrSkipDir):
				seen[p] = struct{}{}
				skipped = append(skipped, p)
			}
			return err
		}, opts...)
	})
}
