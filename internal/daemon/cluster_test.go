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
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/collector"
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
	start := func(id string) *daemon.Daemon { t.Helper(); return startOnCluster(t, c, root, id, now) }
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
	hook := recordWebhook(t, a)
	reg := regtest.Start(t, regtest.Options{Root: root, NotifyURL: hook.URL(), NotifyToken: testToken})
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
	refusedAt := hook.Refused()
	for _, at := range refusedAt {
		if at.Before(killedAt) || at.After(elected) {
			t.Errorf("webhook answered 503 at %s, outside the loss (%s to %s)", at.Format(time.StampMicro),
				killedAt.Format(time.StampMicro), elected.Format(time.StampMicro))
		}
	}
	t.Logf("webhook refused %d notifications in the %s without a stream leader", len(refusedAt), elected.Sub(killedAt).Round(time.Millisecond))
	regtest.WaitFor(t, "one leader after the loss", func() bool { return leaders() == 1 })

	// Collection goes on with the active collector.
	regtest.VerifyCollection(t, root, false, nil, func() {
		regtest.Drain(t, testGrace, testRetention, func(d time.Duration) { offset.Add(int64(d)) }, func() {
			for _, d := range ds {
				if !d.IsLeader() {
					continue
				}
				// A pass that the cluster's API times out (it is still
				// settling after the loss) is tried again, as the daemon's
				// next interval would.
				var rep collector.Report
				regtest.WaitFor(t, "a pass on the active collector", func() bool {
					actx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					var err error
					if rep, err = d.Collect(actx, false); err != nil {
						t.Logf("pass on the active collector: %v", err)
					}
					return err == nil
				})
				if rep.Errors > 0 {
					t.Fatalf("pass on the active collector: %+v", rep)
				}
			}
		})
	})
	for i := range images {
		reg.MustPull(t, fmt.Sprintf("keep%d:v1", i))
	}
}

// startOnCluster starts a `serve --ha` instance on the cluster, its
// stream and leader bucket at three replicas, storing on root, on the
// clock now; it stops when the test ends.
func startOnCluster(t *testing.T, c *jstest.Cluster, root, id string, now func() time.Time) *daemon.Daemon {
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
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d
}

// webhookRecorder is a daemon's webhook behind a proxy that records when
// it answered 503, and fails the test on any other answer but 200.
type webhookRecorder struct {
	srv     *httptest.Server
	mu      sync.Mutex
	refused []time.Time
	ok      int
}

func recordWebhook(t *testing.T, d *daemon.Daemon) *webhookRecorder {
	t.Helper()
	target, err := url.Parse(d.URL())
	if err != nil {
		t.Fatal(err)
	}
	w := &webhookRecorder{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		switch r.StatusCode {
		case http.StatusServiceUnavailable:
			w.refused = append(w.refused, time.Now())
		case http.StatusOK:
			w.ok++
		default:
			t.Errorf("webhook answered %d", r.StatusCode)
		}
		return nil
	}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		r.URL.Path = daemon.WebhookPath
		proxy.ServeHTTP(rw, r)
	}))
	t.Cleanup(w.srv.Close)
	return w
}

// URL is where the registry sends its notifications.
func (w *webhookRecorder) URL() string { return w.srv.URL }

// Refused is when the webhook answered 503, in order.
func (w *webhookRecorder) Refused() []time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.refused)
}

// Accepted is how many requests the webhook answered 200.
func (w *webhookRecorder) Accepted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ok
}

// TestClusterWebhookWithoutQuorum: two of the three servers stop, so the
// event stream (three replicas) has no quorum. The webhook answers 503
// to every notification meanwhile (the registry retries) and never 200
// for an event it could not store; what it acknowledged before stays.
// Once the servers are back, the retried notifications are accepted and
// each of their events is stored, and applied, exactly once.
func TestClusterWebhookWithoutQuorum(t *testing.T) {
	ctx := context.Background()
	c := jstest.StartCluster(t, 3)
	root := t.TempDir()
	d := startOnCluster(t, c, root, "a", time.Now)
	regtest.WaitFor(t, "the instance leads", d.IsLeader)
	hook := recordWebhook(t, d)
	reg := regtest.Start(t, regtest.Options{Root: root, NotifyURL: hook.URL(), NotifyToken: testToken,
		Configure: func(cfg *configuration.Configuration) {
			// A registry that gives up on a request sooner retries sooner.
			for i := range cfg.Notifications.Endpoints {
				cfg.Notifications.Endpoints[i].Timeout = time.Second
			}
		}})
	applied := func(repo string) func() bool {
		return func() bool {
			_, ok, err := d.Projection().Get(events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: "v1"})
			return err == nil && ok
		}
	}
	reg.PushRandom(t, "before:v1", 1)
	regtest.WaitFor(t, "before:v1 applied", applied("before"))

	// The stream's two followers stop: no quorum.
	leader := c.WaitStreamLeader(eventlog.DefaultStreamName)
	stopped := []int{(leader + 1) % 3, (leader + 2) % 3}
	for _, i := range stopped {
		c.Kill(i)
	}
	accepted := hook.Accepted()
	reg.PushRandom(t, "during:v1", 1) // the registry acknowledges; its notifications wait
	regtest.WaitFor(t, "the webhook refusing notifications", func() bool { return len(hook.Refused()) >= 3 })
	if n := hook.Accepted(); n != accepted {
		t.Errorf("the webhook accepted %d notifications without a quorum", n-accepted)
	}
	if !applied("before")() {
		t.Fatal("an acknowledged event is gone")
	}

	for _, i := range stopped {
		c.Restart(i)
	}
	regtest.WaitFor(t, "the webhook accepting", func() bool { return hook.Accepted() > accepted })
	regtest.WaitFor(t, "the retried notifications applied", applied("during"))
	reg.PushRandom(t, "after:v1", 1)
	regtest.WaitFor(t, "after:v1 applied", applied("after"))
	if hook.Accepted() == accepted {
		t.Error("the webhook never accepted again")
	}
	t.Logf("the webhook answered 503 %d times without a quorum", len(hook.Refused()))

	// Each event is in the log once, however often the registry sent it.
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// A cluster just back from losing two servers may still time out a
	// request of its API, or leave a consumer without messages: replay
	// again, each attempt bounded, until one succeeds.
	var seen map[string]int
	regtest.WaitFor(t, "a replay of the stream", func() bool {
		seen = map[string]int{}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		stream, err := js.Stream(ctx, eventlog.DefaultStreamName)
		if err != nil {
			t.Logf("stream: %v", err)
			return false
		}
		err = eventlog.StreamReplay(stream, 0)(ctx, func(string) error { return nil }, func(recs []events.Record) error {
			for _, r := range recs {
				seen[r.Event.ID]++
			}
			return nil
		})
		if err != nil {
			t.Logf("replay: %v", err)
		}
		return err == nil
	})
	for id, n := range seen {
		if n > 1 {
			t.Errorf("event %s stored %d times", id, n)
		}
	}
	if ms, err := d.Projection().Check(); err != nil || len(ms) > 0 {
		t.Fatalf("projection check: %v %v", ms, err)
	}
}
