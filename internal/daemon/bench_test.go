package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/refgc/refgc/internal/daemon"
)

// BenchmarkWebhookE2E posts single-event notifications to the daemon over
// real HTTP (loopback): the webhook translates, publishes to the embedded
// JetStream and answers once the server acknowledged the store (fsync off in
// the projection only; JetStream keeps its defaults). Each request carries a
// fresh event id, so nothing is deduplicated. The baseline is a loopback
// HTTP server that reads the body and answers 200.
func BenchmarkWebhookE2E(b *testing.B) {
	cases := []struct{ name, file string }{
		{"tag-delete", "031"},
		{"manifest-push", "003"},
	}
	tpl := map[string][]byte{}
	for _, c := range cases {
		body, err := os.ReadFile("../../events/testdata/distribution-v3.1.2/events/" + c.file + ".json")
		if err != nil {
			b.Fatal(err)
		}
		tpl[c.name] = body
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}

	run := func(b *testing.B, url string, body []byte, id string) {
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			req := bytes.Replace(body, []byte(id), fmt.Appendf(nil, "bench-%d-%d", time.Now().UnixNano(), i), 1)
			r, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(req))
			r.Header.Set("Authorization", "Bearer "+testToken)
			r.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v2+json")
			start := time.Now()
			resp, err := client.Do(r)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat = append(lat, time.Since(start))
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}

	b.Run("baseline", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 1<<20))
			w.WriteHeader(http.StatusOK)
		}))
		defer srv.Close()
		run(b, srv.URL, tpl["tag-delete"], "01a2054b-7621-7897-a652-01e6bb8120ec")
	})
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := newBenchDaemon(b, false)
			run(b, e.WebhookURL(), tpl[c.name], eventID(b, tpl[c.name]))
		})
	}
	// The same with the projection's fsync off: how much of the tail is the
	// follower's commits competing for the disk and the cores.
	b.Run("tag-delete-projection-nosync", func(b *testing.B) {
		e := newBenchDaemon(b, true)
		run(b, e.WebhookURL(), tpl["tag-delete"], eventID(b, tpl["tag-delete"]))
	})
}

func newBenchDaemon(b *testing.B, noSync bool) *daemon.Daemon {
	b.Helper()
	return newBenchDaemonWith(b, func(c *daemon.Config) { c.NoSync = noSync })
}

// newBenchDaemonWith starts a daemon without storage or collection, its
// configuration changed by mod.
func newBenchDaemonWith(b *testing.B, mod func(*daemon.Config)) *daemon.Daemon {
	b.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir = b.TempDir()
	cfg.Addr = "127.0.0.1:0"
	cfg.NATS.Listen = "127.0.0.1:-1"
	cfg.Webhook.Token = testToken
	cfg.Collector.Interval = 0
	mod(&cfg)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d
}

func eventID(b *testing.B, body []byte) string {
	b.Helper()
	var env struct {
		Events []struct {
			ID string `json:"id"`
		} `json:"events"`
	}
	if err := json.Unmarshal(body, &env); err != nil || len(env.Events) != 1 {
		b.Fatalf("fixture: %v", err)
	}
	return env.Events[0].ID
}
