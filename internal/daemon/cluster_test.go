package daemon_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/internal/regtest"
)

// TestClusterLosesStreamLeader: two `serve --ha` instances on a
// three-node JetStream cluster (stream and leader bucket at three
// replicas); the server that leads the event stream dies during a push
// burst. The webhook refuses (503) while the stream has no leader and
// the registry retries; no acknowledged push is lost; both instances
// follow on the new stream leader; there is never more than one active
// collector, and the active one collects.
func TestClusterLosesStreamLeader(t *testing.T) {
	ctx := context.Background()
	c := jstest.StartCluster(t, 3)
	root := t.TempDir()
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	start := func(id string) *daemon.Daemon {
		t.Helper()
		cfg := daemon.Defaults()
		cfg.DataDir, cfg.Addr = t.TempDir(), "127.0.0.1:0"
		cfg.NATS.URL, cfg.NATS.Replicas = c.URL(), 3
		cfg.Webhook.Token = testToken
		cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
		cfg.Collector.Interval = 0
		cfg.Collector.Grace, cfg.Collector.Retention = testGrace, testRetention
		cfg.Collector.Concurrency = 4
		cfg.HA = daemon.HAConfig{Enabled: true, ID: id, TTL: 900 * time.Millisecond}
		cfg.Now = now
		cfg.NoSync = true
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		d, err := daemon.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
		return d
	}
	a, b := start("a"), start("b")
	ds := []*daemon.Daemon{a, b}
	leaders := func() int {
		n := 0
		for _, d := range ds {
			if d.IsLeader() {
				n++
			}
		}
		return n
	}
	regtest.WaitFor(t, "one leader", func() bool { return leaders() == 1 })

	// Never two active collectors, sampled throughout.
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	var two atomic.Int64
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if leaders() > 1 {
				two.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	})
	defer func() {
		close(stop)
		sampler.Wait()
		if n := two.Load(); n > 0 {
			t.Errorf("two active collectors in %d samples", n)
		}
	}()

	// The webhook's answers, timed, on the way back to the registry.
	target, err := url.Parse(a.URL())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refusedAt []time.Time
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.StatusCode == http.StatusServiceUnavailable {
			mu.Lock()
			refusedAt = append(refusedAt, time.Now())
			mu.Unlock()
		} else if r.StatusCode != http.StatusOK {
			t.Errorf("webhook answered %d", r.StatusCode)
		}
		return nil
	}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = daemon.WebhookPath
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(hook.Close)
	reg := regtest.Start(t, regtest.Options{Root: root, NotifyURL: hook.URL, NotifyToken: testToken})
	reg.Faults.ShiftTime(func() time.Duration { return time.Duration(offset.Load()) })
	killed := -1
	var killedAt time.Time
	const images = 12
	for i := range images {
		if i == images/3 {
			killed = c.WaitStreamLeader(eventlog.DefaultStreamName)
			killedAt = time.Now()
			c.Kill(killed)
		}
		reg.PushRandom(t, fmt.Sprintf("app%d:v1", i%3), 1) // moves tags: garbage
		reg.PushRandom(t, fmt.Sprintf("keep%d:v1", i), 1)
	}
	if l := c.WaitStreamLeader(eventlog.DefaultStreamName); l == killed {
		t.Fatalf("stream leader still %d", l)
	}
	elected := time.Now()
	// Every acknowledged push arrives in both projections.
	for i := range images {
		ref := events.NodeRef{Kind: events.NodeTag, Repo: fmt.Sprintf("keep%d", i), Name: "v1"}
		for _, d := range ds {
			regtest.WaitFor(t, "tag "+ref.Repo, func() bool {
				_, ok, err := d.Projection().Get(ref)
				return err == nil && ok
			})
		}
	}
	// 503 only from the loss until a new stream leader (seen by the
	// test, a little after the instances saw it).
	mu.Lock()
	for _, at := range refusedAt {
		if at.Before(killedAt) || at.After(elected) {
			t.Errorf("webhook answered 503 at %s, outside the loss (%s to %s)", at.Format(time.StampMicro),
				killedAt.Format(time.StampMicro), elected.Format(time.StampMicro))
		}
	}
	t.Logf("webhook refused %d notifications in the %s without a stream leader", len(refusedAt), elected.Sub(killedAt).Round(time.Millisecond))
	mu.Unlock()
	regtest.WaitFor(t, "one leader after the loss", func() bool { return leaders() == 1 })

	// Collection goes on with the active collector.
	regtest.VerifyCollection(t, root, false, nil, func() {
		regtest.Drain(t, testGrace, testRetention, func(d time.Duration) { offset.Add(int64(d)) }, func() {
			for _, d := range ds {
				if !d.IsLeader() {
					continue
				}
				if rep, err := d.Collect(ctx, false); err != nil || rep.Errors > 0 {
					t.Fatalf("pass on the active collector: %+v %v", rep, err)
				}
			}
		})
	})
	for i := range images {
		reg.MustPull(t, fmt.Sprintf("keep%d:v1", i))
	}
}
