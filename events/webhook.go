package events

// The webhook ingest: the HTTP endpoint CNCF Distribution posts its
// notifications to (served by the caller at POST /v1/distribution/events).
//
// Invariants:
//   - The answer is 200 only after the Sink has acknowledged every domain
//     event and every dead letter of the envelope. Malformed or
//     untranslatable events are dead-lettered and still answered 200:
//     Distribution retries a non-2xx answer forever and holds every later
//     event behind it, so only a failing Sink (the event log unreachable)
//     gets 503, with Retry-After, and the registry's retry is then safe
//     because events and dead letters dedupe on their ids.
//   - 401 (bad token), 413 (body over the limit) and 415 (wrong content
//     type) are configuration errors and also block the registry's queue:
//     they are counted and logged so that an operator notices.

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sink is where the webhook puts what it translated; *Publisher is one.
type Sink interface {
	// PublishBatch stores all events, or reports an error (after which
	// some may be stored; republishing them is safe).
	PublishBatch(ctx context.Context, evs []Event) ([]PubResult, error)
	// DeadLetter stores a notification that could not become an event.
	DeadLetter(ctx context.Context, d DeadLetter) error
}

// DefaultWebhookRetryAfter is the Retry-After of a 503 answer.
const DefaultWebhookRetryAfter = 5 * time.Second

// DefaultWebhookPublishTimeout is the default bound on the Sink's work for one request.
const DefaultWebhookPublishTimeout = 10 * time.Second

// WebhookConfig configures NewWebhook.
type WebhookConfig struct {
	// Sink receives events and dead letters. Required.
	Sink Sink
	// Token is the bearer token the registry must send (configure it in
	// the endpoint's headers as "Authorization: Bearer <token>"). Empty
	// disables authentication: for development only.
	Token string
	// MaxBodyBytes limits a request body (default DefaultMaxBodySize);
	// larger bodies get 413.
	MaxBodyBytes int64
	// Translate configures the translation (manifest reader, clock).
	// Its MaxBodySize is set to MaxBodyBytes.
	Translate TranslateOptions
	// PublishTimeout bounds the Sink's work for one request (default
	// DefaultWebhookPublishTimeout); past it the answer is 503. Keep the
	// registry endpoint's timeout (Distribution's default is 1 s) above
	// the usual publish latency, or every slow publish is sent twice.
	PublishTimeout time.Duration
	// RetryAfter is sent with 503 (default DefaultWebhookRetryAfter).
	RetryAfter time.Duration
	// Registerer receives the webhook's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// WebhookResponse is the JSON body of a 200 answer.
type WebhookResponse struct {
	// Accepted counts domain events the Sink stored (Duplicates of them
	// were already stored, from an earlier delivery).
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	// DeadLettered counts registry events stored as dead letters.
	DeadLettered int `json:"deadLettered"`
	// Dropped counts registry events that needed no domain event.
	Dropped int `json:"dropped"`
}

type webhook struct {
	cfg        WebhookConfig
	token      []byte
	log        *slog.Logger
	retryAfter string
	m          *webhookMetrics
}

type webhookMetrics struct {
	requests     *prometheus.CounterVec
	received     *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	unauthorized prometheus.Counter
	duration     prometheus.Histogram
	enrichFail   prometheus.Counter
}

// NewWebhook returns the handler of Distribution's notifications. It
// handles every request it gets as a notification POST; route it at
// POST /v1/distribution/events. It panics if cfg.Sink is nil.
func NewWebhook(cfg WebhookConfig) http.Handler {
	if cfg.Sink == nil {
		panic("events: NewWebhook without a Sink")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodySize
	}
	cfg.Translate.MaxBodySize = cfg.MaxBodyBytes
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultWebhookRetryAfter
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultWebhookPublishTimeout
	}
	h := &webhook{
		cfg:        cfg,
		log:        cfg.Logger,
		retryAfter: strconv.Itoa(int((cfg.RetryAfter + time.Second - 1) / time.Second)),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if cfg.Token != "" {
		h.token = []byte(cfg.Token)
	}
	if cfg.Registerer != nil {
		h.m = newWebhookMetrics(cfg.Registerer)
	}
	return h
}

func newWebhookMetrics(reg prometheus.Registerer) *webhookMetrics {
	return &webhookMetrics{
		requests: registerWebhookMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_requests_total",
			Help: "Notification requests answered, by HTTP status code.",
		}, []string{"code"})),
		received: registerWebhookMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_events_received_total",
			Help: "Registry events received, by action (unknown and malformed ones grouped).",
		}, []string{"action"})),
		deadLettered: registerWebhookMetric(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_events_dead_lettered_total",
			Help: "Registry events stored as dead letters, by reason.",
		}, []string{"reason"})),
		unauthorized: registerWebhookMetric(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_webhook_unauthorized_total",
			Help: "Notification requests refused for a missing or wrong bearer token.",
		})),
		duration: registerWebhookMetric(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "refgc_webhook_request_duration_seconds",
			Help:    "Time to answer a notification request, publishing included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		})),
		enrichFail: registerWebhookMetric(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_webhook_enrichment_failures_total",
			Help: "Manifest pushes whose manifest could not be read (translated without a subject).",
		})),
	}
}

// registerWebhookMetric registers c, or returns the collector already
// registered under the same description (several handlers may share a registry).
func registerWebhookMetric[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("events: register webhook metric: %v", err))
	}
	return c
}

// actionLabel keeps the action label to a fixed set.
func actionLabel(r *Result) string {
	switch r.Action {
	case ActionPull, ActionPush, ActionMount, ActionDelete:
		return r.Action
	}
	if r.Reason == ReasonMalformedJSON || r.Reason == ReasonTooLarge {
		return "malformed"
	}
	return "unknown"
}

func (h *webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code := h.serve(w, r, start)
	if h.m != nil {
		h.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		h.m.duration.Observe(time.Since(start).Seconds())
	}
}

// webhookError answers an error with a one-line text body and returns its code.
func webhookError(w http.ResponseWriter, code int, msg string) int {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
	return code
}

func (h *webhook) serve(w http.ResponseWriter, r *http.Request, start time.Time) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return webhookError(w, http.StatusMethodNotAllowed, "notifications are POSTed")
	}
	if h.token != nil && !h.authorized(r) {
		if h.m != nil {
			h.m.unauthorized.Inc()
		}
		h.log.Warn("webhook: unauthorized notification request", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="refgc"`)
		return webhookError(w, http.StatusUnauthorized, "missing or wrong bearer token")
	}
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (ct != DistributionEventsMediaType && ct != "application/json") {
		h.log.Warn("webhook: unsupported content type", "content_type", clip(r.Header.Get("Content-Type")), "remote", r.RemoteAddr)
		return webhookError(w, http.StatusUnsupportedMediaType, "content type must be "+DistributionEventsMediaType+" or application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.log.Warn("webhook: notification body over the limit", "limit", h.cfg.MaxBodyBytes, "remote", r.RemoteAddr)
			return webhookError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", h.cfg.MaxBodyBytes))
		}
		h.log.Warn("webhook: reading the body failed", "err", err, "remote", r.RemoteAddr)
		return webhookError(w, http.StatusBadRequest, "cannot read the body")
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
	defer cancel()
	results := Translate(ctx, body, h.cfg.Translate)
	var (
		evs  []Event
		dead []DeadLetter
		resp WebhookResponse
	)
	for i := range results {
		res := &results[i]
		if h.m != nil {
			h.m.received.WithLabelValues(actionLabel(res)).Inc()
		}
		switch {
		case res.DeadLettered():
			dead = append(dead, DeadLetter{
				ID: res.ID, Source: res.Source, Reason: res.Reason,
				Detail: errText(res.Err), Body: res.Raw, Time: start,
			})
		case res.Dropped != "":
			resp.Dropped++
			h.log.Debug("webhook: event dropped", "id", res.ID, "action", res.Action, "why", res.Dropped)
		default:
			evs = append(evs, res.Events...)
		}
		if res.EnrichErr != nil {
			if h.m != nil {
				h.m.enrichFail.Inc()
			}
			h.log.Warn("webhook: manifest enrichment failed; translated without subject",
				"id", res.ID, "err", res.EnrichErr)
		}
	}

	if len(evs) > 0 {
		pubs, err := h.cfg.Sink.PublishBatch(ctx, evs)
		if err != nil {
			return h.unavailable(w, "publish", err, len(evs))
		}
		for _, p := range pubs {
			if p.Duplicate {
				resp.Duplicates++
			}
		}
		resp.Accepted = len(evs)
	}
	for _, d := range dead {
		if err := h.cfg.Sink.DeadLetter(ctx, d); err != nil {
			return h.unavailable(w, "dead letter", err, len(dead))
		}
	}
	for _, d := range dead {
		if h.m != nil {
			h.m.deadLettered.WithLabelValues(d.Reason).Inc()
		}
		h.log.Warn("webhook: event dead-lettered", "id", d.ID, "source", d.Source, "reason", d.Reason, "err", d.Detail)
	}
	resp.DeadLettered = len(dead)

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(resp)
	return http.StatusOK
}

func (h *webhook) unavailable(w http.ResponseWriter, what string, err error, n int) int {
	h.log.Error("webhook: sink failed; answering 503 so that the registry retries",
		"op", what, "events", n, "err", err)
	w.Header().Set("Retry-After", h.retryAfter)
	return webhookError(w, http.StatusServiceUnavailable, "event log unavailable, retry later")
}

// authorized compares the bearer token in constant time.
func (h *webhook) authorized(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return false
	}
	got := []byte(strings.TrimSpace(auth[len(prefix):]))
	return subtle.ConstantTimeCompare(got, h.token) == 1
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
