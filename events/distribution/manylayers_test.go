package distribution

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/jstest"
)

// manyLayersPush is the notification of a manifest push (includereferences
// on) whose manifest lists n layers: about 130 bytes a layer, so 10,000
// layers make a manifest of about 1.3 MB, well within Distribution's 4 MiB
// manifest limit and the webhook's 32 MiB body limit.
func manyLayersPush(t testing.TB, id string, n int) []byte {
	t.Helper()
	ts, _ := time.Parse(time.RFC3339, "2026-11-22T22:05:20Z")
	refs := []v1.Descriptor{{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fxConfig2, Size: 7}}
	for i := 0; i < n; i++ {
		refs = append(refs, v1.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
			Digest: digest.FromString(fmt.Sprintf("layer-%d", i)), Size: 1000})
	}
	ev := DistributionEvent{
		ID: id, Timestamp: ts, Action: ActionPush,
		Target: DistributionTarget{
			Descriptor: v1.Descriptor{MediaType: events.MediaTypeOCIManifest, Digest: fxV1, Size: int64(n*130 + 500)},
			Repository: "demo", URL: "http://reg/v2/demo/manifests/" + fxV1.String(), Tag: "big",
			References: refs,
		},
		Request: DistributionRequest{Method: http.MethodPut},
		Source:  DistributionSource{Addr: "reg:5000", InstanceID: "i-1"},
	}
	b, err := json.Marshal(struct {
		Events []DistributionEvent `json:"events"`
	}{[]DistributionEvent{ev}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManyLayersTranslateDecodes: the event a legal manifest push
// translates into is readable back from the log. A 10,000-layer manifest
// (1.3 MB, legal in Distribution) once translated into an event over the
// limit Decode takes: the follower would have stopped at it.
func TestManyLayersTranslateDecodes(t *testing.T) {
	body := manyLayersPush(t, "many-1", 10_000)
	r := Translate(context.Background(), body, TranslateOptions{})[0]
	if r.DeadLettered() || len(r.Events) != 1 {
		t.Fatalf("not translated: %s %v", r.Reason, r.Err)
	}
	b, err := events.Encode(r.Events[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Decode(b); err != nil {
		t.Fatalf("notification of %d bytes translates into an event of %d bytes that Decode refuses: %v", len(body), len(b), err)
	}
}

// TestManyLayersWebhookIntoJetStream: the same notification through the
// real webhook, Publisher and embedded JetStream is stored and answered
// 200. (It once exceeded the server's max payload: 503 for ever, and the
// registry's queue blocked behind it.)
func TestManyLayersWebhookIntoJetStream(t *testing.T) {
	js, _ := jstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub, err := eventlog.NewPublisher(js, eventlog.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewWebhook(WebhookConfig{
		Sink: pub, Token: testToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PublishTimeout: 30 * time.Second, // 1.5 MB through JetStream, under the race detector
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	body := manyLayersPush(t, "many-2", 10_000)
	for attempt := 0; attempt < 3; attempt++ { // the registry's retries
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL, bytes.NewReader(body))
		req.Header.Set("Content-Type", DistributionEventsMediaType)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("attempt %d: a legal %d-byte manifest push is answered %s (%s): the registry's queue is blocked behind it for ever",
				attempt, len(body), resp.Status, bytes.TrimSpace(msg))
		}
	}
}
