package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
)

// BenchmarkPullsE2E posts pull notifications of content pushed just before
// (1,000 layers, each pulled in turn, 1,000 pulls a second of registry time
// from one registry instance) to the daemon's webhook over loopback HTTP,
// and measures what they cost the event log: bytes and messages per pull,
// with every pull published ("every-pull", the webhook's filter off) and
// with pulls of content held with a fresh lease dropped ("filtered", the
// default heartbeat of one a second).
func BenchmarkPullsE2E(b *testing.B) {
	const layers = 1000
	t0 := time.Now().UTC().Truncate(time.Hour)
	layer := func(i int) digest.Digest { return digest.FromString(fmt.Sprintf("pulled-layer-%d", i%layers)) }
	note := func(id, action string, d digest.Digest, at time.Time) []byte {
		body, err := json.Marshal(map[string]any{"events": []any{map[string]any{
			"id": id, "timestamp": at.Format(time.RFC3339Nano), "action": action,
			"target":  map[string]any{"repository": "team/app", "mediaType": "application/octet-stream", "digest": d, "size": 1000},
			"request": map[string]any{"method": "GET"}, "source": map[string]any{"addr": "reg:5000", "instanceID": "bench"},
		}}})
		if err != nil {
			b.Fatal(err)
		}
		return body
	}
	for _, tc := range []struct {
		name      string
		heartbeat time.Duration
	}{{"every-pull", -1}, {"filtered", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			d := newBenchDaemonWith(b, func(c *daemon.Config) { c.Webhook.PullHeartbeat = tc.heartbeat })
			client := &http.Client{}
			post := func(body []byte) {
				r, _ := http.NewRequest(http.MethodPost, d.WebhookURL(), bytes.NewReader(body))
				r.Header.Set("Authorization", "Bearer "+testToken)
				r.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(r)
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			for i := range layers {
				post(note(fmt.Sprintf("push-%d", i), "push", layer(i), t0))
			}
			nc, err := nats.Connect(d.NATSURL())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			info := func() *jetstream.StreamInfo {
				s, err := js.Stream(ctx, eventlog.DefaultStreamName)
				if err != nil {
					b.Fatal(err)
				}
				in, err := s.Info(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := d.Follower().WaitApplied(ctx, in.State.LastSeq); err != nil {
					b.Fatal(err)
				}
				return in
			}
			before := info()
			b.ResetTimer()
			for i := range b.N {
				post(note(fmt.Sprintf("pull-%d", i), "pull", layer(i), t0.Add(time.Duration(i+1)*time.Millisecond)))
			}
			after := info()
			b.StopTimer()
			perPull := float64(after.State.Bytes-before.State.Bytes) / float64(b.N)
			b.ReportMetric(perPull, "log-bytes/pull")
			b.ReportMetric(perPull*1e6/(1<<20), "log-MiB/Mpulls")
			b.ReportMetric(float64(after.State.Msgs-before.State.Msgs)/float64(b.N), "events/pull")
		})
	}
}
