package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws" // the s3 driver these tests use
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/internal/s3test"
)

// backends are the storage drivers the store's suite runs against: the
// filesystem, and s3 against an in-process S3 server.
var backends = []struct {
	name string
	open func(t *testing.T, opts ...Option) (*Driver, *s3test.Server)
}{
	{"filesystem", func(t *testing.T, opts ...Option) (*Driver, *s3test.Server) {
		s, err := New(context.Background(), "filesystem", map[string]any{"rootdirectory": t.TempDir()}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s, nil
	}},
	{"s3", func(t *testing.T, opts ...Option) (*Driver, *s3test.Server) {
		srv := s3test.Start(t, s3test.Options{})
		s, err := New(context.Background(), "s3", srv.Params("/registry-root"), opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s, srv
	}},
}

func forEachBackend(t *testing.T, test func(t *testing.T, s *Driver)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t)
			test(t, s)
		})
	}
}

// fakeClock is a clock whose sleeps move it forward at once.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	slept  time.Duration
	sleeps int
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept += d
	c.sleeps++
	return ctx.Err()
}

// slowDriver answers the next n calls with S3's SlowDown, as the s3
// driver reports it once the SDK's own retries are spent (the in-process
// S3 server's throttling is tested in collector, where the SDK's retries
// sleep on the wall clock).
type slowDriver struct {
	storagedriver.StorageDriver
	n atomic.Int64
}

func (d *slowDriver) slow() error {
	if d.n.Add(-1) >= 0 {
		return storagedriver.Error{DriverName: "s3aws", Detail: codeErr{"SlowDown", 503}}
	}
	return nil
}

func (d *slowDriver) Delete(ctx context.Context, p string) error {
	if err := d.slow(); err != nil {
		return err
	}
	return d.StorageDriver.Delete(ctx, p)
}

func (d *slowDriver) Walk(ctx context.Context, p string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	calls := 0
	return d.StorageDriver.Walk(ctx, p, func(fi storagedriver.FileInfo) error {
		// Throttled in the middle of the walk.
		if calls++; calls == 3 {
			if err := d.slow(); err != nil {
				return err
			}
		}
		return f(fi)
	}, opts...)
}

// TestThrottleBacksOff: while the backend answers SlowDown, every call
// waits and is retried; none fails, a walk throttled in the middle visits
// everything exactly once, and the pauses grow with the throttling.
func TestThrottleBacksOff(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	reg := prometheus.NewRegistry()
	fs := newFS(t, t.TempDir())
	slow := &slowDriver{StorageDriver: fs.StorageDriver()}
	s := FromDriver(slow, WithRegisterer(reg), WithBackoff(Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Now: clock.Now, Sleep: clock.Sleep}))
	var ds []digest.Digest
	for i := range 20 {
		d := putBlob(t, s, fmt.Sprint("blob ", i))
		ds = append(ds, d)
		if err := s.LinkLayer(ctx, "r", d); err != nil {
			t.Fatal(err)
		}
	}
	slow.n.Store(16)
	var wg sync.WaitGroup
	for _, d := range ds[:4] {
		wg.Go(func() {
			if err := s.DeleteLayerLink(ctx, "r", d); err != nil {
				t.Errorf("delete under throttling: %v", err)
			}
		})
	}
	wg.Wait()
	if n := slow.n.Load(); n > 0 {
		t.Fatalf("%d refusals left", n)
	}
	if n := regtest.Counter(t, reg, "refgc_store_throttled_total"); n != 16 {
		t.Fatalf("throttled calls counted: %v, want 16", n)
	}
	// Sixteen refusals in a row: the pause grew to its ceiling's range.
	if clock.sleeps < 16 || clock.slept < 10*time.Second {
		t.Fatalf("backoff too short: %d sleeps, %v", clock.sleeps, clock.slept)
	}
	slow.n.Store(3)
	got := collect(t, func(fn func(digest.Digest) error) error { return s.LayerLinks(ctx, "r", fn) })
	if want := sorted(ds[4:]...); !slices.Equal(got, want) {
		t.Fatalf("walk under throttling: %d layer links, want %d", len(got), len(want))
	}

	// A canceled context ends the wait with its error.
	slow.n.Store(1000)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.DeleteLayerLink(cctx, "r", ds[15]); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled under throttling: %v", err)
	}
}

func TestIsThrottled(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("x"), false},
		{"code", codeErr{"SlowDown", 0}, true},
		{"status 503", codeErr{"", 503}, true},
		{"status 429", codeErr{"", 429}, true},
		{"not found", codeErr{"NoSuchKey", 404}, false},
		{"wrapped", fmt.Errorf("x: %w", codeErr{"Throttling", 400}), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsThrottled(tc.err); got != tc.want {
				t.Fatalf("IsThrottled(%v) = %v", tc.err, got)
			}
		})
	}
}

type codeErr struct {
	code   string
	status int
}

func (e codeErr) Error() string   { return e.code }
func (e codeErr) Code() string    { return e.code }
func (e codeErr) StatusCode() int { return e.status }

func TestTagIndex(t *testing.T) { forEachBackend(t, testTagIndex) }

func testTagIndex(t *testing.T, s *Driver) {
	ctx := context.Background()
	m1, m2 := putBlob(t, s, "m1"), putBlob(t, s, "m2")
	for _, step := range []struct {
		tag string
		d   digest.Digest
	}{{"v1", m1}, {"latest", m1}, {"latest", m2}} {
		if err := s.LinkTag(ctx, "a/b", step.tag, step.d); err != nil {
			t.Fatal(err)
		}
	}
	type info struct {
		current bool
		history []digest.Digest
	}
	got := map[string]info{}
	if err := s.TagIndex(ctx, "a/b", func(tag string, current bool, history []digest.Digest) error {
		got[tag] = info{current, history}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["v1"].current || !slices.Equal(got["v1"].history, []digest.Digest{m1}) ||
		!got["latest"].current || !slices.Equal(got["latest"].history, sorted(m1, m2)) {
		t.Fatalf("tag index %+v", got)
	}
	if d, err := s.TagCurrent(ctx, "a/b", "latest"); err != nil || d != m2 {
		t.Fatalf("current %s %v", d, err)
	}
	if _, err := s.TagCurrent(ctx, "a/b", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("current of a missing tag: %v", err)
	}
	if err := s.TagIndex(ctx, "never/was", func(string, bool, []digest.Digest) error {
		t.Fatal("a tag in an absent repository")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
