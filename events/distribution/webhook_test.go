package distribution

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/events/internal/fixtures"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/internal/regtest"
)

// recordingSink records what the webhook hands it; failPublish and
// failDead make the respective calls fail.
type recordingSink struct {
	mu          sync.Mutex
	events      []events.Event
	dead        []eventlog.DeadLetter
	failPublish error
	failDead    error
}

func (s *recordingSink) PublishBatch(_ context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failPublish != nil {
		return nil, s.failPublish
	}
	res := make([]eventlog.PubResult, len(evs))
	for i, e := range evs {
		for _, old := range s.events {
			if old.ID == e.ID {
				res[i].Duplicate = true
			}
		}
		if !res[i].Duplicate {
			s.events = append(s.events, e)
		}
	}
	return res, nil
}

func (s *recordingSink) DeadLetter(_ context.Context, d eventlog.DeadLetter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failDead != nil {
		return s.failDead
	}
	for _, old := range s.dead {
		if old.ID == d.ID {
			return nil // deduplicated, as the dead-letter stream does
		}
	}
	s.dead = append(s.dead, d)
	return nil
}

const testToken = "s3cret-token"

type webhookFixture struct {
	h    http.Handler
	sink *recordingSink
	reg  *prometheus.Registry
}

func newWebhookFixture(t testing.TB, mod func(*WebhookConfig)) *webhookFixture {
	t.Helper()
	f := &webhookFixture{sink: &recordingSink{}, reg: prometheus.NewRegistry()}
	cfg := WebhookConfig{
		Sink: f.sink, Token: testToken, Registerer: f.reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	f.h = regtest.Must(NewWebhook(cfg))
	return f
}

func (f *webhookFixture) post(t testing.TB, body []byte, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/v1/distribution/events", bytes.NewReader(body))
	req.Header.Set("Content-Type", DistributionEventsMediaType)
	req.Header.Set("Authorization", "Bearer "+testToken)
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, req)
	return w
}

// split returns the translated events and the Refused events the sink holds.
func (s *recordingSink) split() (translated, refused []events.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if e.Kind == events.Refused {
			refused = append(refused, e)
		} else {
			translated = append(translated, e)
		}
	}
	return translated, refused
}

func decodeResponse(t testing.TB, w *httptest.ResponseRecorder) WebhookResponse {
	t.Helper()
	var r WebhookResponse
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatalf("response %q: %v", w.Body.String(), err)
	}
	return r
}

func TestWebhookStatus(t *testing.T) {
	good := fixtures.Read(t, "events/001.json")
	// Every answer but 401 and 405 is 200: anything else would block the
	// registry's queue. What is not accepted is dead-lettered and refused.
	tests := []struct {
		name     string
		mod      func(*WebhookConfig)
		method   string
		body     []byte
		hdr      map[string]string
		code     int
		accepted int
		refused  string // the reason of the one Refused event, if any
	}{
		{name: "authorized", body: good, code: 200, accepted: 1},
		{name: "lower-case scheme", body: good, hdr: map[string]string{"Authorization": "bearer " + testToken}, code: 200, accepted: 1},
		{name: "missing token", body: good, hdr: map[string]string{"Authorization": ""}, code: 401, refused: ReasonUnauthorized},
		{name: "wrong token", body: good, hdr: map[string]string{"Authorization": "Bearer nope"}, code: 401, refused: ReasonUnauthorized},
		{name: "token prefix only", body: good, hdr: map[string]string{"Authorization": "Bearer " + testToken[:5]}, code: 401, refused: ReasonUnauthorized},
		{name: "basic instead of bearer", body: good, hdr: map[string]string{"Authorization": "Basic " + testToken}, code: 401, refused: ReasonUnauthorized},
		{name: "auth disabled", mod: func(c *WebhookConfig) { c.Token = "" }, body: good, hdr: map[string]string{"Authorization": ""}, code: 200, accepted: 1},
		{name: "application/json", body: good, hdr: map[string]string{"Content-Type": "application/json; charset=utf-8"}, code: 200, accepted: 1},
		{name: "wrong content type, parses", body: good, hdr: map[string]string{"Content-Type": "text/plain"}, code: 200, accepted: 1},
		{name: "no content type, parses", body: good, hdr: map[string]string{"Content-Type": ""}, code: 200, accepted: 1},
		{name: "wrong content type, does not parse", body: []byte("<html>"), hdr: map[string]string{"Content-Type": "text/html"}, code: 200, refused: ReasonMalformedJSON},
		{name: "body too large", mod: func(c *WebhookConfig) { c.MaxBodyBytes = 512 }, body: good, code: 200, refused: ReasonTooLarge},
		{name: "body at the limit", mod: func(c *WebhookConfig) { c.MaxBodyBytes = int64(len(good)) }, body: good, code: 200, accepted: 1},
		{name: "GET", method: http.MethodGet, code: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, tt.mod)
			var w *httptest.ResponseRecorder
			if tt.method != "" {
				req := httptest.NewRequest(tt.method, "/v1/distribution/events", nil)
				w = httptest.NewRecorder()
				f.h.ServeHTTP(w, req)
			} else {
				w = f.post(t, tt.body, tt.hdr)
			}
			if w.Code != tt.code {
				t.Fatalf("code %d (%s), want %d", w.Code, w.Body, tt.code)
			}
			translated, refused := f.sink.split()
			if len(translated) != tt.accepted {
				t.Errorf("%d events published, want %d", len(translated), tt.accepted)
			}
			switch {
			case tt.refused == "" && len(refused) != 0:
				t.Errorf("refused: %+v", refused)
			case tt.refused != "" && (len(refused) != 1 || refused[0].Refused.Reason != tt.refused):
				t.Errorf("refused: %+v, want one with reason %s", refused, tt.refused)
			}
			if wantDead := tt.refused != "" && tt.code == 200; wantDead != (len(f.sink.dead) == 1) || len(f.sink.dead) > 1 {
				t.Errorf("dead letters: %+v", f.sink.dead)
			}
			if tt.code == 200 && decodeResponse(t, w).Accepted != tt.accepted {
				t.Errorf("response %s", w.Body)
			}
			if got := testutil.ToFloat64(f.m(t).requests.WithLabelValues(strconv.Itoa(tt.code))); got != 1 {
				t.Errorf("refgc_webhook_requests_total{code=%d} = %v", tt.code, got)
			}
			wantUnauth := 0.0
			if tt.code == 401 {
				wantUnauth = 1
				if w.Header().Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
			if got := testutil.ToFloat64(f.m(t).unauthorized); got != wantUnauth {
				t.Errorf("refgc_webhook_unauthorized_total = %v, want %v", got, wantUnauth)
			}
		})
	}
}

// m digs the metrics out of the handler.
func (f *webhookFixture) m(t testing.TB) *webhookMetrics {
	t.Helper()
	h, ok := f.h.(*webhook)
	if !ok || h.m == nil {
		t.Fatal("handler without metrics")
	}
	return h.m
}

func TestWebhookMalformedIsDeadLettered(t *testing.T) {
	f := newWebhookFixture(t, nil)
	body := []byte(`{"events": [ {"id": "x", `)
	w := f.post(t, body, nil)
	if w.Code != 200 {
		t.Fatalf("code %d, want 200", w.Code)
	}
	if r := decodeResponse(t, w); r.DeadLettered != 1 || r.Accepted != 0 {
		t.Errorf("response %+v", r)
	}
	if len(f.sink.dead) != 1 || f.sink.dead[0].Reason != ReasonMalformedJSON || !bytes.Equal(f.sink.dead[0].Body, body) ||
		f.sink.dead[0].Detail == "" || f.sink.dead[0].ID == "" || f.sink.dead[0].Time.IsZero() {
		t.Errorf("dead letters %+v", f.sink.dead)
	}
	if got := testutil.ToFloat64(f.m(t).deadLettered.WithLabelValues(ReasonMalformedJSON)); got != 1 {
		t.Errorf("dead-lettered metric = %v", got)
	}
	if got := testutil.ToFloat64(f.m(t).received.WithLabelValues("malformed")); got != 1 {
		t.Errorf("received{malformed} = %v", got)
	}
	if _, refused := f.sink.split(); len(refused) != 1 || refused[0].ID != "refused-"+f.sink.dead[0].ID ||
		refused[0].Refused.Reason != ReasonMalformedJSON {
		t.Errorf("Refused events %+v", refused)
	}
	if got := testutil.ToFloat64(f.m(t).refused.WithLabelValues(ReasonMalformedJSON)); got != 1 {
		t.Errorf("refused metric = %v", got)
	}
}

// TestWebhookWrongContentType: a body of another content type is parsed
// all the same; when it does not parse, the dead letter says what type it came as.
func TestWebhookWrongContentType(t *testing.T) {
	f := newWebhookFixture(t, nil)
	w := f.post(t, []byte("<html>"), map[string]string{"Content-Type": "text/html"})
	if w.Code != 200 {
		t.Fatalf("code %d (%s)", w.Code, w.Body)
	}
	if len(f.sink.dead) != 1 || f.sink.dead[0].Reason != ReasonMalformedJSON || !strings.Contains(f.sink.dead[0].Detail, `"text/html"`) {
		t.Errorf("dead letters %+v", f.sink.dead)
	}
}

func TestWebhookMixedEnvelope(t *testing.T) {
	f := newWebhookFixture(t, nil)
	good1 := rawEvent("g1", "push", "demo", blobTarget(fixtures.L1))
	bad1 := rawEvent("b1", "push", "Demo", blobTarget(fixtures.L1))
	good2 := rawEvent("g2", "delete", "demo", map[string]any{"tag": "v1"})
	bad2 := rawEvent("b2", "teleport", "demo", blobTarget(fixtures.L1))
	drop := rawEvent("d1", "pull", "demo", map[string]any{"tag": "v1"})
	bad3 := `[]`
	w := f.post(t, envelope(good1, bad1, good2, bad2, drop, bad3), nil)
	if w.Code != 200 {
		t.Fatalf("code %d (%s)", w.Code, w.Body)
	}
	want := WebhookResponse{Accepted: 2, DeadLettered: 3, Dropped: 1}
	if r := decodeResponse(t, w); r != want {
		t.Errorf("response %+v, want %+v", r, want)
	}
	translated, refused := f.sink.split()
	var ids []string
	for _, e := range translated {
		ids = append(ids, e.ID)
		if e.Host != "reg:5000" || e.Received.IsZero() {
			t.Errorf("event %s: host %q, received %s", e.ID, e.Host, e.Received)
		}
	}
	if !reflect.DeepEqual(ids, []string{"g1", "g2"}) {
		t.Errorf("published %v", ids)
	}
	var reasons []string
	for i, d := range f.sink.dead {
		reasons = append(reasons, d.ID+"="+d.Reason)
		if !json.Valid(d.Body) {
			t.Errorf("dead letter body %q", d.Body)
		}
		// Each dead letter is announced by a Refused event.
		if i >= len(refused) {
			t.Fatalf("%d Refused events for %d dead letters", len(refused), len(f.sink.dead))
		}
		r := refused[i]
		if r.ID != "refused-"+d.ID || r.Refused.Reason != d.Reason || r.Source != d.Source || r.Time != d.Time || r.Received != d.Time {
			t.Errorf("Refused event %+v %+v for dead letter %+v", r, r.Refused, d)
		}
	}
	if len(refused) != len(f.sink.dead) {
		t.Errorf("%d Refused events for %d dead letters", len(refused), len(f.sink.dead))
	}
	// b1 named an invalid repository: not repeated; b2 named demo.
	if refused[0].Refused.Repo != "" || refused[1].Refused.Repo != "demo" || refused[1].Host != "reg:5000" {
		t.Errorf("Refused bodies %+v %+v", refused[0].Refused, refused[1].Refused)
	}
	if !strings.HasPrefix(reasons[2], "raw:") {
		t.Errorf("unreadable event id %q", reasons[2])
	}
	reasons[2] = "raw=" + strings.SplitN(reasons[2], "=", 2)[1]
	if !reflect.DeepEqual(reasons, []string{"b1=invalid_event", "b2=unknown_action", "raw=malformed_json"}) {
		t.Errorf("dead letters %v", reasons)
	}
	m := f.m(t)
	for label, want := range map[string]float64{"push": 2, "delete": 1, "pull": 1, "unknown": 1, "malformed": 1} {
		if got := testutil.ToFloat64(m.received.WithLabelValues(label)); got != want {
			t.Errorf("received{%s} = %v, want %v", label, got, want)
		}
	}
}

func TestWebhookSinkFailure(t *testing.T) {
	body := envelope(rawEvent("g1", "push", "demo", blobTarget(fixtures.L1)), `"bad"`)
	boom := errors.New("nats: no responders")
	for _, tt := range []struct {
		name string
		set  func(*recordingSink)
	}{
		{"publish fails", func(s *recordingSink) { s.failPublish = boom }},
		{"dead letter fails", func(s *recordingSink) { s.failDead = boom }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, func(c *WebhookConfig) { c.RetryAfter = 1500 * time.Millisecond })
			tt.set(f.sink)
			w := f.post(t, body, nil)
			if w.Code != http.StatusServiceUnavailable {
				t.Fatalf("code %d, want 503", w.Code)
			}
			if w.Header().Get("Retry-After") != "2" {
				t.Errorf("Retry-After = %q", w.Header().Get("Retry-After"))
			}
			if strings.Contains(w.Body.String(), "accepted") {
				t.Errorf("503 body claims acceptance: %s", w.Body)
			}
			if got := testutil.ToFloat64(f.m(t).deadLettered.WithLabelValues(ReasonMalformedJSON)); got != 0 {
				t.Errorf("dead letter counted although not acknowledged")
			}
			// The registry retries once the log is back: same ids, so no duplicates.
			f.sink.failPublish, f.sink.failDead = nil, nil
			if w := f.post(t, body, nil); w.Code != 200 {
				t.Fatalf("retry: code %d", w.Code)
			}
			if w := f.post(t, body, nil); w.Code != 200 || decodeResponse(t, w).Duplicates != 1 {
				t.Fatalf("second retry: %d %s", w.Code, w.Body)
			}
			if translated, refused := f.sink.split(); len(translated) != 1 || len(refused) != 1 || len(f.sink.dead) != 1 {
				t.Errorf("%d events, %d Refused events, %d dead letters stored", len(translated), len(refused), len(f.sink.dead))
			}
		})
	}
}

func TestWebhookEnrichmentFailureCounted(t *testing.T) {
	f := newWebhookFixture(t, func(c *WebhookConfig) {
		c.Translate.Reader = &mapReader{err: errors.New("registry down")}
	})
	if w := f.post(t, fixtures.Read(t, "events/030.json"), nil); w.Code != 200 {
		t.Fatalf("code %d", w.Code)
	}
	if got := testutil.ToFloat64(f.m(t).enrichFail); got != 1 {
		t.Errorf("enrichment failures = %v", got)
	}
	if len(f.sink.events) != 1 || f.sink.events[0].Manifest.Subject != nil {
		t.Errorf("events %+v", f.sink.events)
	}
}

// TestWebhookReplayFixtures posts every capture, in order, and checks what
// reaches the sink; then the registry's redeliveries, twice.
func TestWebhookReplayFixtures(t *testing.T) {
	f := newWebhookFixture(t, func(c *WebhookConfig) { c.Translate.Reader = fixtureReader(t) })
	files := fixtureFiles(t)
	for _, name := range files {
		if w := f.post(t, fixtures.Read(t, name), nil); w.Code != 200 {
			t.Fatalf("%s: code %d (%s)", name, w.Code, w.Body)
		}
	}
	if len(f.sink.events) != len(files) || len(f.sink.dead) != 0 {
		t.Fatalf("%d events, %d dead letters; want %d events", len(f.sink.events), len(f.sink.dead), len(files))
	}
	for i, name := range files {
		got := summary(f.sink.events[i])
		want := fixtureWants[name]
		want.enrich = false
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v\nwant %+v", name, got, want)
		}
	}
	// Redelivery: the same ids again are duplicates.
	for _, name := range files[len(files)-4:] {
		w := f.post(t, fixtures.Read(t, name), nil)
		if w.Code != 200 || decodeResponse(t, w).Duplicates != 1 {
			t.Fatalf("%s redelivered: %d %s", name, w.Code, w.Body)
		}
	}
	if got := testutil.ToFloat64(f.m(t).requests.WithLabelValues("200")); got != float64(len(files)+4) {
		t.Errorf("requests{200} = %v", got)
	}
	if n := testutil.CollectAndCount(f.m(t).duration); n != 1 {
		t.Errorf("duration histogram: %d series", n)
	}
	// The index push (026) could not be read from this reader: counted.
	if got := testutil.ToFloat64(f.m(t).enrichFail); got != 1 {
		t.Errorf("enrichment failures = %v, want 1", got)
	}
}

func TestWebhookSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		regtest.Must(NewWebhook(WebhookConfig{Sink: &recordingSink{}, Registerer: reg}))
	}
	names := map[string]bool{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	// Only the metrics without labels appear before any observation.
	for _, n := range []string{"refgc_webhook_unauthorized_total", "refgc_webhook_request_duration_seconds", "refgc_webhook_enrichment_failures_total"} {
		if !names[n] {
			t.Errorf("metric %s missing (have %v)", n, names)
		}
	}
}

// TestWebhookIntoJetStream runs the handler over the real Publisher and an
// embedded JetStream server: the fixtures land in the event log once each,
// redeliveries dedupe, dead letters land in their stream, and with the
// server gone the handler answers 503.
func TestWebhookIntoJetStream(t *testing.T) {
	js, srv := jstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	stream, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	h := regtest.Must(NewWebhook(WebhookConfig{
		Sink:      regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})),
		Token:     testToken,
		Translate: TranslateOptions{Reader: fixtureReader(t)},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		// Short, so that the outage below answers well within the client's wait.
		PublishTimeout: 500 * time.Millisecond,
	}))
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	post := func(body []byte) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL+"/v1/distribution/events", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", DistributionEventsMediaType)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	files := fixtureFiles(t)
	for _, name := range append(files, files...) { // everything delivered twice
		if resp := post(fixtures.Read(t, name)); resp.StatusCode != 200 {
			t.Fatalf("%s: %s", name, resp.Status)
		}
	}
	if resp := post([]byte(`not json`)); resp.StatusCode != 200 {
		t.Fatalf("malformed: %s", resp.Status)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The fixtures once each, and the Refused event of the malformed body.
	if info.State.Msgs != uint64(len(files))+1 {
		t.Errorf("event log holds %d events, want %d", info.State.Msgs, len(files)+1)
	}
	// Read the log back: the events in delivery order, decoded and valid.
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(len(files)+1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var last events.Event
	for msg := range batch.Messages() {
		e, err := events.Decode(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		if msg.Subject() != eventlog.Subject(e) {
			t.Errorf("subject %s for %s", msg.Subject(), e.ID)
		}
		got = append(got, e.ID)
		last = e
	}
	if len(got) != len(files)+1 {
		t.Fatalf("read %d events", len(got))
	}
	if last.Kind != events.Refused || last.Refused.Reason != ReasonMalformedJSON {
		t.Errorf("last event %+v, want the refusal of the malformed body", last)
	}
	for i, name := range files {
		var env struct{ Events []DistributionEvent }
		_ = json.Unmarshal(fixtures.Read(t, name), &env)
		if got[i] != env.Events[0].ID {
			t.Errorf("event %d is %s, want %s (%s)", i, got[i], env.Events[0].ID, name)
		}
	}
	dl, err := js.Stream(ctx, eventlog.DefaultDeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if dinfo, err := dl.Info(ctx); err != nil || dinfo.State.Msgs != 1 {
		t.Errorf("dead letters: %+v %v", dinfo, err)
	}

	// The event log goes away: 503, so that the registry keeps the event.
	srv.Shutdown()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL, bytes.NewReader(fixtures.Read(t, "events/001.json")))
	req.Header.Set("Content-Type", DistributionEventsMediaType)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("with the log down: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
}

// noopSink acknowledges everything at once.
type noopSink struct{}

func (noopSink) PublishBatch(_ context.Context, evs []events.Event) ([]eventlog.PubResult, error) {
	return make([]eventlog.PubResult, len(evs)), nil
}
func (noopSink) DeadLetter(context.Context, eventlog.DeadLetter) error { return nil }

// BenchmarkWebhook measures single-event requests through the handler (auth,
// limits, translation, metrics) with a no-op sink, reporting p50 and p99
// latency. "baseline" is a handler that only reads the body and answers 200.
func BenchmarkWebhook(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	full := func(reader ManifestReader) http.Handler {
		return regtest.Must(NewWebhook(WebhookConfig{Sink: noopSink{}, Token: testToken, Registerer: prometheus.NewRegistry(),
			Logger: quiet, Translate: TranslateOptions{Reader: reader}}))
	}
	baseline := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(http.MaxBytesReader(w, r.Body, DefaultMaxBodySize))
		w.WriteHeader(http.StatusOK)
	})
	cases := []struct {
		name, file string
		h          http.Handler
	}{
		{"baseline", "events/003.json", baseline},
		{"blob-push", "events/001.json", full(nil)},
		{"pull", "events/009.json", full(nil)},
		{"manifest-push", "events/003.json", full(nil)},
		{"manifest-push-enriched", "events/030.json", full(fixtureReader(b))},
		{"tag-delete", "events/031.json", full(nil)},
	}
	for _, c := range cases {
		body := fixtures.Read(b, c.file)
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := httptest.NewRequest(http.MethodPost, "/v1/distribution/events", bytes.NewReader(body))
				req.Header.Set("Content-Type", DistributionEventsMediaType)
				req.Header.Set("Authorization", "Bearer "+testToken)
				w := httptest.NewRecorder()
				start := time.Now()
				c.h.ServeHTTP(w, req)
				lat = append(lat, time.Since(start))
				if w.Code != http.StatusOK {
					b.Fatalf("code %d", w.Code)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}

// TestWebhookWithRegistry runs a real Distribution registry whose
// notifications reach the handler, which reads pushed OCI manifests back
// from the same registry: a referrer's subject is found, every event
// translates, and the manifest reader verifies what it reads.
func TestWebhookWithRegistry(t *testing.T) {
	sink := &recordingSink{}
	reg := prometheus.NewRegistry()
	var reader RegistryManifestReader
	hs := httptest.NewServer(regtest.Must(NewWebhook(WebhookConfig{
		Sink: sink, Token: testToken, Registerer: reg,
		Translate: TranslateOptions{Reader: &reader},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})))
	t.Cleanup(hs.Close)
	r := regtest.Start(t, regtest.Options{NotifyURL: hs.URL + "/v1/distribution/events", NotifyToken: testToken})
	reader.BaseURL = r.URL

	img := regtest.OCI(regtest.RandomImage(t, 2))
	imgDigest := digest.Digest(r.Push(t, "app:v1", img).String())
	subject := regtest.Describe(t, img)
	art := r.PushReferrer(t, "app", subject, "application/vnd.example.sbom")
	r.DeleteTag(t, "app", "v1")

	artDigest := digest.Digest(art.Digest.String())
	find := func() (img, ref, del *events.Event) {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		for i := range sink.events {
			e := &sink.events[i]
			switch {
			case e.Kind == events.ManifestPushed && e.Manifest.Digest == imgDigest:
				img = e
			case e.Kind == events.ManifestPushed && e.Manifest.Digest == artDigest:
				ref = e
			case e.Kind == events.TagDeleted && e.Tag.Repo == "app" && e.Tag.Name == "v1":
				del = e
			}
		}
		return img, ref, del
	}
	deadline := time.Now().Add(30 * time.Second)
	var imgEv, refEv, delEv *events.Event
	for {
		if imgEv, refEv, delEv = find(); imgEv != nil && refEv != nil && delEv != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events not delivered: image %v, referrer %v, tag delete %v", imgEv != nil, refEv != nil, delEv != nil)
		}
		time.Sleep(10 * time.Millisecond) // polling for delivery, with a deadline
	}

	if imgEv.Manifest.Tag != "v1" || imgEv.Manifest.MediaType != events.MediaTypeOCIManifest || len(imgEv.Manifest.Blobs) != 3 || imgEv.Manifest.Subject != nil {
		t.Errorf("image push: %+v", imgEv.Manifest)
	}
	wantSubject := &events.Descriptor{MediaType: string(subject.MediaType), Digest: imgDigest, Size: subject.Size}
	if !reflect.DeepEqual(refEv.Manifest.Subject, wantSubject) {
		t.Errorf("referrer subject %+v, want %+v", refEv.Manifest.Subject, wantSubject)
	}
	wantBlobs := []digest.Digest{digest.Digest(art.Config.String()), digest.Digest(art.Layer.String())}
	if len(refEv.Manifest.Blobs) != 2 || refEv.Manifest.Blobs[0].Digest != wantBlobs[0] || refEv.Manifest.Blobs[1].Digest != wantBlobs[1] {
		t.Errorf("referrer blobs %+v, want %v", refEv.Manifest.Blobs, wantBlobs)
	}
	sink.mu.Lock()
	nDead := len(sink.dead)
	sink.mu.Unlock()
	if nDead != 0 {
		t.Errorf("%d dead letters", nDead)
	}
	h := regtest.Counter(t, reg, "refgc_webhook_enrichment_failures_total")
	if h != 0 {
		t.Errorf("enrichment failures %v", h)
	}

	// The reader on its own: the exact bytes, the media type, and a 404.
	ctx := context.Background()
	body, mt, err := reader.ReadManifest(ctx, "app", artDigest)
	if err != nil || string(body) != string(art.Manifest) || mt != events.MediaTypeOCIManifest {
		t.Errorf("ReadManifest: %q, %d bytes, %v", mt, len(body), err)
	}
	if _, _, err := reader.ReadManifest(ctx, "app", digest.FromString("absent")); !errors.Is(err, ErrManifestNotFound) {
		t.Errorf("absent manifest: %v", err)
	}
}

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestWebhookReceived: every published event carries the time the request
// arrived, on the webhook's clock, which also stamps registry events
// without a timestamp; the registry's own timestamps are kept.
func TestWebhookReceived(t *testing.T) {
	clock := newFakeClock()
	f := newWebhookFixture(t, func(c *WebhookConfig) { c.Now = clock.Now })
	untimed := `{"id":"untimed","action":"pull","target":{"repository":"demo","digest":"` + string(fixtures.L1) + `"},"source":{"addr":"reg:5000"}}`
	w := f.post(t, envelope(rawEvent("timed", "push", "demo", blobTarget(fixtures.L1)), untimed), nil)
	if w.Code != 200 {
		t.Fatalf("code %d (%s)", w.Code, w.Body)
	}
	translated, _ := f.sink.split()
	if len(translated) != 2 {
		t.Fatalf("events %+v", translated)
	}
	registryTime, _ := time.Parse(time.RFC3339Nano, "2026-11-22T22:05:20.820960181Z")
	for _, e := range translated {
		want := registryTime
		if e.ID == "untimed" {
			want = clock.Now()
		}
		if !e.Received.Equal(clock.Now()) || !e.Time.Equal(want) || e.Host != "reg:5000" {
			t.Errorf("%s: time %s received %s host %q; want time %s received %s", e.ID, e.Time, e.Received, e.Host, want, clock.Now())
		}
	}
}

// TestWebhookHugeAnnotation: a notification of several MB, a manifest
// whose reference carries a 1.1 MB annotation, is accepted and translated.
func TestWebhookHugeAnnotation(t *testing.T) {
	f := newWebhookFixture(t, nil)
	w := f.post(t, hugeAnnotationPush(t, "huge-1", 1_100_000), nil)
	if w.Code != 200 {
		t.Fatalf("code %d (%s)", w.Code, w.Body)
	}
	translated, refused := f.sink.split()
	if r := decodeResponse(t, w); r.Accepted != 1 || len(translated) != 1 || len(refused) != 0 || len(f.sink.dead) != 0 {
		t.Fatalf("response %+v; %d events, %d refused, %d dead letters", r, len(translated), len(refused), len(f.sink.dead))
	}
	if m := translated[0].Manifest; m == nil || m.Digest != fixtures.M1 || len(m.Blobs) != 2 {
		t.Errorf("manifest %+v", m)
	}
}

// TestWebhookOverLimit: a body over the limit is answered 200, its start
// dead-lettered as too_large and announced by a Refused event; past the
// hard cap the connection is also closed. A redelivery dedupes both.
func TestWebhookOverLimit(t *testing.T) {
	const limit = 200 << 10
	tests := []struct {
		name   string
		n      int // annotation bytes; escaped, six times as many
		capped bool
	}{
		{name: "over the limit", n: limit / 3},
		{name: "over the hard cap", n: limit, capped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			f := newWebhookFixture(t, func(c *WebhookConfig) {
				c.MaxBodyBytes = limit
				c.Now = clock.Now
			})
			body := hugeAnnotationPush(t, "big-1", tt.n)
			if len(body) <= limit || (len(body) > maxBodyFactor*limit) != tt.capped {
				t.Fatalf("body of %d bytes does not fit the case", len(body))
			}
			for round := range 2 {
				w := f.post(t, body, nil)
				if w.Code != 200 {
					t.Fatalf("round %d: code %d (%s)", round, w.Code, w.Body)
				}
				if got := w.Header().Get("Connection") == "close"; got != tt.capped {
					t.Errorf("Connection: %q", w.Header().Get("Connection"))
				}
				if r := decodeResponse(t, w); r.DeadLettered != 1 || r.Accepted != 0 {
					t.Errorf("response %+v", r)
				}
			}
			translated, refused := f.sink.split()
			if len(translated) != 0 || len(refused) != 1 || len(f.sink.dead) != 1 {
				t.Fatalf("%d events, %d refused, %d dead letters; want one refusal and one dead letter",
					len(translated), len(refused), len(f.sink.dead))
			}
			d, r := f.sink.dead[0], refused[0]
			if d.Reason != ReasonTooLarge || !bytes.Equal(d.Body, body[:tooLargeKeep]) || !d.Time.Equal(clock.Now()) ||
				!strings.Contains(d.Detail, strconv.Itoa(limit)) {
				t.Errorf("dead letter %s %q %s, %d bytes", d.Reason, d.Detail, d.Time, len(d.Body))
			}
			// The repository is in the kept start; the source, at the end, is not.
			want := events.RefusedRef{Reason: ReasonTooLarge, Repo: "demo"}
			if r.ID != "refused-"+d.ID || *r.Refused != want || !r.Time.Equal(clock.Now()) || !r.Received.Equal(clock.Now()) ||
				r.Source != "distribution" || r.Validate() != nil {
				t.Errorf("Refused event %+v %+v", r, r.Refused)
			}
			m := f.m(t)
			if got := testutil.ToFloat64(m.refused.WithLabelValues(ReasonTooLarge)); got != 2 {
				t.Errorf("refgc_webhook_refused_total{reason=too_large} = %v, want 2", got)
			}
		})
	}
}

// TestWebhookUnauthorizedRefusals: 401 for every request with a bad
// token, its body never read, but at most one Refused event per minute of
// the webhook's clock.
func TestWebhookUnauthorizedRefusals(t *testing.T) {
	clock := newFakeClock()
	start := clock.Now()
	f := newWebhookFixture(t, func(c *WebhookConfig) { c.Now = clock.Now })
	steps := []struct {
		advance  time.Duration
		requests int
		refused  int // Refused events in total after the step
	}{
		{0, 5, 1},
		{30 * time.Second, 5, 1},
		{30 * time.Second, 1, 2}, // a minute after the first
		{59 * time.Second, 3, 2},
		{time.Second, 2, 3},
		{10 * time.Minute, 1, 4},
	}
	total := 0
	for _, st := range steps {
		clock.Add(st.advance)
		t.Run(fmt.Sprintf("at +%s", clock.Now().Sub(start)), func(t *testing.T) {
			for range st.requests {
				body := &readSpy{r: strings.NewReader(`{"events":[]}`)}
				req := httptest.NewRequest(http.MethodPost, "/v1/distribution/events", body)
				req.Header.Set("Content-Type", DistributionEventsMediaType)
				req.Header.Set("Authorization", "Bearer forged")
				w := httptest.NewRecorder()
				f.h.ServeHTTP(w, req)
				if w.Code != http.StatusUnauthorized {
					t.Fatalf("code %d", w.Code)
				}
				if body.read {
					t.Error("the body of an unauthorized request was read")
				}
			}
			total += st.requests
			_, refused := f.sink.split()
			if len(refused) != st.refused {
				t.Fatalf("%d Refused events, want %d", len(refused), st.refused)
			}
			last := refused[len(refused)-1]
			if last.Refused.Reason != ReasonUnauthorized || last.Source != "" || last.Host != "" || last.Validate() != nil {
				t.Errorf("Refused event %+v %+v", last, last.Refused)
			}
			if len(f.sink.dead) != 0 {
				t.Errorf("dead letters %+v", f.sink.dead)
			}
			m := f.m(t)
			if got := testutil.ToFloat64(m.unauthorized); got != float64(total) {
				t.Errorf("refgc_webhook_unauthorized_total = %v, want %d", got, total)
			}
			if got := testutil.ToFloat64(m.refused.WithLabelValues(ReasonUnauthorized)); got != float64(total) {
				t.Errorf("refgc_webhook_refused_total{reason=unauthorized} = %v, want %d", got, total)
			}
		})
	}
}

// readSpy records whether its reader was read.
type readSpy struct {
	r    io.Reader
	read bool
}

func (s *readSpy) Read(p []byte) (int, error) {
	s.read = true
	return s.r.Read(p)
}

// TestWebhookTokens: any of Token and Tokens is accepted, so a token can
// be rotated without refusing the registry.
func TestWebhookTokens(t *testing.T) {
	tests := []struct {
		name   string
		token  string
		tokens []string
		send   string // "" sends no Authorization header
		code   int
	}{
		{name: "old of two", tokens: []string{"old-token", "new-token"}, send: "old-token", code: 200},
		{name: "new of two", tokens: []string{"old-token", "new-token"}, send: "new-token", code: 200},
		{name: "Token beside Tokens", token: "primary", tokens: []string{"next"}, send: "primary", code: 200},
		{name: "Tokens beside Token", token: "primary", tokens: []string{"next"}, send: "next", code: 200},
		{name: "none of them", token: "primary", tokens: []string{"next"}, send: "other", code: 401},
		{name: "a prefix of one", tokens: []string{"old-token", "new-token"}, send: "new", code: 401},
		{name: "no header", tokens: []string{"old-token", "new-token"}, code: 401},
		{name: "empty entries are not tokens", tokens: []string{"", "x"}, send: " ", code: 401},
		{name: "only empty entries: authentication off", tokens: []string{""}, code: 200},
	}
	good := fixtures.Read(t, "events/001.json")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, func(c *WebhookConfig) { c.Token, c.Tokens = tt.token, tt.tokens })
			auth := ""
			if tt.send != "" {
				auth = "Bearer " + tt.send
			}
			w := f.post(t, good, map[string]string{"Authorization": auth})
			if w.Code != tt.code {
				t.Fatalf("code %d (%s), want %d", w.Code, w.Body, tt.code)
			}
			if translated, _ := f.sink.split(); (len(translated) == 1) != (tt.code == 200) {
				t.Errorf("%d events published", len(translated))
			}
		})
	}
}
