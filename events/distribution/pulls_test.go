package distribution

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events/internal/fixtures"
	"github.com/refgc/refgc/internal/regtest"
)

// freshness answers Fresh from a table; calls are recorded.
type freshness struct {
	mu    sync.Mutex
	fresh bool
	err   error
	calls int
}

func (f *freshness) Fresh(string, digest.Digest, time.Time) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.fresh, f.err
}

// pullAt is a pull notification from a registry instance at t0 + ms.
func pullAt(id, instance string, ms int) string {
	return notificationAt(id, "pull", instance, ms)
}

func notificationAt(id, action, instance string, ms int) string {
	t0 := time.Date(2026, 11, 22, 22, 0, 0, 0, time.UTC)
	b, err := json.Marshal(map[string]any{
		"id": id, "timestamp": t0.Add(time.Duration(ms) * time.Millisecond).Format(time.RFC3339Nano), "action": action,
		"target":  map[string]any{"repository": "demo", "mediaType": "application/octet-stream", "digest": fixtures.L1, "size": 3},
		"request": map[string]any{"method": "GET"}, "source": map[string]any{"addr": "reg:5000", "instanceID": instance},
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestWebhookSkipsFreshPulls: pulls the projection would skip are not
// published, except one per instance per heartbeat of registry time.
func TestWebhookSkipsFreshPulls(t *testing.T) {
	tests := []struct {
		name   string
		filter *freshness // nil: no filter
		notes  []string   // posted one request each
		batch  bool       // posted in one request
		want   []string   // ids published
	}{
		{name: "no filter publishes every pull", notes: []string{pullAt("a1", "A", 0), pullAt("a2", "A", 10)},
			want: []string{"a1", "a2"}},
		{name: "one pull per instance per heartbeat", filter: &freshness{fresh: true},
			notes: []string{pullAt("a1", "A", 0), pullAt("a2", "A", 300), pullAt("b1", "B", 400), pullAt("a3", "A", 999),
				pullAt("a4", "A", 1000), pullAt("b2", "B", 1100), pullAt("a5", "A", 1900), pullAt("b3", "B", 1400)},
			want: []string{"a1", "b1", "a4", "b3"}},
		{name: "any published event is a heartbeat", filter: &freshness{fresh: true},
			notes: []string{notificationAt("push", "push", "A", 0), pullAt("a1", "A", 500), notificationAt("push2", "push", "A", 1200), pullAt("a2", "A", 1300)},
			want:  []string{"push", "push2"}},
		{name: "a pull that would lease is published", filter: &freshness{fresh: false},
			notes: []string{pullAt("a1", "A", 0), pullAt("a2", "A", 10)}, want: []string{"a1", "a2"}},
		{name: "a failing filter publishes", filter: &freshness{fresh: true, err: errors.New("projection closed")},
			notes: []string{pullAt("a1", "A", 0), pullAt("a2", "A", 10)}, want: []string{"a1", "a2"}},
		{name: "one request, one heartbeat", filter: &freshness{fresh: true}, batch: true,
			notes: []string{pullAt("a1", "A", 0), pullAt("a2", "A", 1), pullAt("a3", "A", 2)}, want: []string{"a1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newWebhookFixture(t, func(c *WebhookConfig) {
				if tc.filter != nil {
					c.Pulls = tc.filter
				}
			})
			bodies := [][]byte{envelope(tc.notes...)}
			if !tc.batch {
				bodies = nil
				for _, n := range tc.notes {
					bodies = append(bodies, envelope(n))
				}
			}
			for _, body := range bodies {
				if w := f.post(t, body, nil); w.Code != 200 {
					t.Fatalf("code %d (%s)", w.Code, w.Body)
				}
			}
			translated, _ := f.sink.split()
			var got []string
			for _, e := range translated {
				got = append(got, e.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("published %v, want %v", got, tc.want)
			}
			if skipped, want := regtest.Counter(t, f.reg, "refgc_webhook_pulls_skipped_total"), len(tc.notes)-len(tc.want); int(skipped) != want {
				t.Fatalf("skipped %v, want %d", skipped, want)
			}
		})
	}
}
