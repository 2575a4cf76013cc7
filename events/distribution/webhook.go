package distribution

// The webhook ingest: the HTTP endpoint CNCF Distribution posts its
// notifications to (served by the caller at POST /v1/distribution/events).
//
// Distribution retries a non-2xx answer for ever and holds every later
// notification behind it, so an answer other than 200 blocks the
// registry's whole queue. The webhook therefore answers 200 to everything
// it can store, good or bad, and announces in the event log whatever it
// could not accept, so that the projection knows it may have missed
// something.
//
// Invariants:
//   - The answer is 200 only after the Sink has acknowledged every domain
//     event and every dead letter of the envelope. Every domain event the
//     webhook publishes carries Received, the time the request arrived.
//   - Malformed or untranslatable events, bodies over the size limit and
//     bodies of a wrong content type that do not parse are dead-lettered
//     and still answered 200. An over-limit body is read to its end (up to
//     maxBodyFactor times the limit, past which the connection is closed)
//     and only its first 64 KiB are kept.
//   - Each dead letter goes with one Refused event, published in the same
//     PublishBatch as the envelope's other events, whose ID derives from
//     the dead letter's, so that a redelivery dedupes both.
//   - Only a failing Sink (the event log unreachable) gets 503, with
//     Retry-After; the registry's retry is then safe because events and
//     dead letters dedupe on their ids.
//   - A missing or wrong bearer token gets 401: an unauthenticated body is
//     never read, let alone trusted. It blocks the registry's queue until
//     the configuration is fixed, so it is counted, logged, and announced
//     by a Refused event (reason unauthorized) at most once a minute of
//     the webhook's clock, so that forged requests cannot flood the log.
//     Several tokens may be accepted at once, to rotate one without a
//     blocked queue.
//   - A pull (Touched) that would change nothing in the projection is not
//     published (see Pulls), except one per registry instance per
//     PullHeartbeat of registry time, so that the instance's delivery
//     watermark never lags its queue by more than that.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/prom"
)

// Sink is where the webhook puts what it translated; *Publisher is one.
type Sink interface {
	// PublishBatch stores all events, or reports an error (after which
	// some may be stored; republishing them is safe).
	PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error)
	// DeadLetter stores a notification that could not become an event.
	DeadLetter(ctx context.Context, d eventlog.DeadLetter) error
}

// DefaultWebhookRetryAfter is the Retry-After of a 503 answer.
const DefaultWebhookRetryAfter = 5 * time.Second

// DefaultWebhookPublishTimeout is the default bound on the Sink's work for one request.
const DefaultWebhookPublishTimeout = 10 * time.Second

// ReasonUnauthorized is the Refused reason of requests with a missing or
// wrong bearer token. It is never a dead-letter reason: such a body is not read.
const ReasonUnauthorized = events.RefusedUnauthorized

// UnauthorizedRefusalInterval is the least time, on the webhook's clock,
// between two Refused events for unauthorized requests.
const UnauthorizedRefusalInterval = time.Minute

// maxBodyFactor bounds how much of an over-limit body is read (and
// discarded) to give the registry its 200: this many times the limit.
const maxBodyFactor = 4

// DefaultPullHeartbeat is the default WebhookConfig.PullHeartbeat.
const DefaultPullHeartbeat = time.Second

// maxPullSources bounds the registry instances whose last published event
// the webhook remembers; past it the memory is cleared (which publishes
// one more pull per instance).
const maxPullSources = 4096

// PullFilter says whether a pull would change nothing in the projection.
// *refcount.Projection implements it (Fresh): a pull is skipped there when
// every node it names exists with a lease that has at least 7/8 of the
// grace to run. Leases only grow, so a projection behind the log can only
// answer false where an up-to-date one would answer true, never the
// reverse: a pull it calls fresh would be skipped when applied.
type PullFilter interface {
	Fresh(repo string, d digest.Digest, at time.Time) (bool, error)
}

// WebhookConfig configures NewWebhook.
type WebhookConfig struct {
	// Sink receives events and dead letters. Required.
	Sink Sink
	// Token is a bearer token the registry must send (configure it in
	// the endpoint's headers as "Authorization: Bearer <token>").
	Token string
	// Tokens are more accepted tokens: a request bearing any of Token and
	// Tokens is authorized. To rotate, add the new token, switch the
	// registry to it, then remove the old one. With no token at all,
	// authentication is off: for development only.
	Tokens []string
	// MaxBodyBytes limits a request body (default DefaultMaxBodySize). A
	// larger body is read on (up to 4 times the limit, past which the
	// connection is closed), dead-lettered as too_large with its first
	// 64 KiB, and answered 200.
	MaxBodyBytes int64
	// Now is the webhook's clock (default Translate.Now, else time.Now):
	// the receipt time of a request (Event.Received, dead letters, the
	// rate of unauthorized refusals). Translate.Now is set to it, so it
	// also stamps registry events that lack a timestamp.
	Now func() time.Time
	// Translate configures the translation (manifest reader). Its
	// MaxBodySize is set to MaxBodyBytes and its Now to Now.
	Translate TranslateOptions
	// PublishTimeout bounds the Sink's work for one request (default
	// DefaultWebhookPublishTimeout); past it the answer is 503. Keep the
	// registry endpoint's timeout (Distribution's default is 1 s) above
	// the usual publish latency, or every slow publish is sent twice.
	PublishTimeout time.Duration
	// RetryAfter is sent with 503 (default DefaultWebhookRetryAfter).
	RetryAfter time.Duration
	// Pulls, if set, lets the webhook drop pulls that would change nothing
	// (PullFilter); nil publishes every pull.
	Pulls PullFilter
	// PullHeartbeat is how much registry time may pass between two events
	// the webhook publishes for one registry instance before it publishes a
	// pull it could drop (default DefaultPullHeartbeat). The instance's
	// delivery watermark, which bounds what the collector may unlink, is the
	// time of its newest published event.
	PullHeartbeat time.Duration
	// Registerer receives the webhook's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// WebhookResponse is the JSON body of a 200 answer.
type WebhookResponse struct {
	// Accepted counts the translated domain events the Sink stored
	// (Duplicates of them were already stored, from an earlier delivery);
	// the Refused events that announce dead letters are not counted.
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	// DeadLettered counts registry events (or whole envelopes) stored as
	// dead letters, each announced by a Refused event.
	DeadLettered int `json:"deadLettered"`
	// Dropped counts registry events that needed no domain event (pulls
	// that would change nothing included).
	Dropped int `json:"dropped"`
}

type webhook struct {
	cfg        WebhookConfig
	tokens     [][]byte // nil: authentication off
	now        func() time.Time
	log        *slog.Logger
	retryAfter string
	m          *webhookMetrics

	mu               sync.Mutex
	lastUnauthorized time.Time            // when the last unauthorized refusal was published
	published        map[string]time.Time // registry instance → time of its newest published event
}

type webhookMetrics struct {
	requests     *prometheus.CounterVec
	received     *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	refused      *prometheus.CounterVec
	unauthorized prometheus.Counter
	duration     prometheus.Histogram
	enrichFail   prometheus.Counter
	pullsSkipped prometheus.Counter
}

// NewWebhook returns the handler of Distribution's notifications. It
// handles every request it gets as a notification POST; route it at
// POST /v1/distribution/events. It fails if cfg.Sink is nil.
func NewWebhook(cfg WebhookConfig) (http.Handler, error) {
	if cfg.Sink == nil {
		return nil, errors.New("distribution: NewWebhook without a Sink")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodySize
	}
	cfg.MaxBodyBytes = min(cfg.MaxBodyBytes, math.MaxInt64/maxBodyFactor)
	cfg.Translate.MaxBodySize = cfg.MaxBodyBytes
	if cfg.Now == nil {
		cfg.Now = cfg.Translate.Now
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Translate.Now = cfg.Now
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultWebhookRetryAfter
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultWebhookPublishTimeout
	}
	if cfg.PullHeartbeat <= 0 {
		cfg.PullHeartbeat = DefaultPullHeartbeat
	}
	h := &webhook{
		published:  map[string]time.Time{},
		cfg:        cfg,
		now:        cfg.Now,
		log:        cfg.Logger,
		retryAfter: strconv.Itoa(int((cfg.RetryAfter + time.Second - 1) / time.Second)),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	for _, t := range append([]string{cfg.Token}, cfg.Tokens...) {
		if t != "" {
			h.tokens = append(h.tokens, []byte(t))
		}
	}
	if cfg.Registerer != nil {
		h.m = newWebhookMetrics(cfg.Registerer)
	}
	return h, nil
}

func newWebhookMetrics(reg prometheus.Registerer) *webhookMetrics {
	return &webhookMetrics{
		requests: prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_requests_total",
			Help: "Notification requests answered, by HTTP status code.",
		}, []string{"code"})),
		received: prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_events_received_total",
			Help: "Registry events received, by action (unknown and malformed ones grouped).",
		}, []string{"action"})),
		deadLettered: prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_events_dead_lettered_total",
			Help: "Registry events stored as dead letters, by reason.",
		}, []string{"reason"})),
		refused: prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_webhook_refused_total",
			Help: "Notifications refused (dead-lettered, over the size limit, or unauthorized), by reason. " +
				"Each is announced by a Refused event, unauthorized ones at most once a minute.",
		}, []string{"reason"})),
		unauthorized: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_webhook_unauthorized_total",
			Help: "Notification requests refused for a missing or wrong bearer token.",
		})),
		duration: prom.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "refgc_webhook_request_duration_seconds",
			Help:    "Time to answer a notification request, publishing included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		})),
		enrichFail: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_webhook_enrichment_failures_total",
			Help: "Manifest pushes whose manifest could not be read (translated without a subject).",
		})),
		pullsSkipped: prom.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_webhook_pulls_skipped_total",
			Help: "Pulls not published because they would change nothing in the projection (leases fresh).",
		})),
	}
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
	code := h.serve(w, r)
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

func (h *webhook) serve(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return webhookError(w, http.StatusMethodNotAllowed, "notifications are POSTed")
	}
	received := h.now()
	if h.tokens != nil && !h.authorized(r) {
		return h.unauthorized(w, r, received)
	}
	ctHeader := r.Header.Get("Content-Type")
	ct, _, err := mime.ParseMediaType(ctHeader)
	badType := err != nil || (ct != DistributionEventsMediaType && ct != "application/json")
	if badType {
		h.log.Warn("webhook: unexpected content type, parsing the body anyway",
			"content_type", clip(ctHeader), "remote", r.RemoteAddr)
	}
	body, size, capped, err := h.readBody(r)
	if err != nil {
		h.log.Warn("webhook: reading the body failed", "err", err, "remote", r.RemoteAddr)
		return webhookError(w, http.StatusBadRequest, "cannot read the body")
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
	defer cancel()
	var results []Result
	if size > h.cfg.MaxBodyBytes {
		if capped {
			w.Header().Set("Connection", "close")
		}
		h.log.Warn("webhook: notification body over the limit, dead-lettered", "limit", h.cfg.MaxBodyBytes,
			"size", size, "read_to_end", !capped, "remote", r.RemoteAddr)
		results = []Result{tooLarge(body, size, h.cfg.MaxBodyBytes, capped)}
	} else {
		results = Translate(ctx, body, h.cfg.Translate)
	}

	var (
		evs  []events.Event
		dead []eventlog.DeadLetter
		resp WebhookResponse
		beat = map[string]time.Time{} // published by this request, by instance
	)
	for i := range results {
		res := &results[i]
		if h.m != nil {
			h.m.received.WithLabelValues(actionLabel(res)).Inc()
		}
		switch {
		case res.DeadLettered():
			detail := errText(res.Err)
			if badType && res.Index < 0 {
				detail = fmt.Sprintf("%s (content type %q)", detail, clip(ctHeader))
			}
			dead = append(dead, eventlog.DeadLetter{
				ID: res.ID, Source: res.Source, Reason: res.Reason,
				Detail: detail, Body: res.Raw, Time: received,
			})
			evs = append(evs, refusedEvent(res, received))
		case res.Dropped != "":
			resp.Dropped++
			h.log.Debug("webhook: event dropped", "id", res.ID, "action", res.Action, "why", res.Dropped)
		default:
			for _, e := range res.Events {
				if h.skipPull(e, beat) {
					resp.Dropped++
					continue
				}
				e.Received = received
				evs = append(evs, e)
				beat[e.Source] = later(beat[e.Source], e.Time)
			}
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
		h.mu.Lock()
		if len(h.published) > maxPullSources {
			clear(h.published)
		}
		for src, t := range beat {
			h.published[src] = later(h.published[src], t)
		}
		h.mu.Unlock()
		for i, e := range evs {
			if e.Kind == events.Refused {
				continue
			}
			resp.Accepted++
			if i < len(pubs) && pubs[i].Duplicate {
				resp.Duplicates++
			}
		}
	}
	for _, d := range dead {
		if err := h.cfg.Sink.DeadLetter(ctx, d); err != nil {
			return h.unavailable(w, "dead letter", err, len(dead))
		}
	}
	for _, d := range dead {
		if h.m != nil {
			h.m.deadLettered.WithLabelValues(d.Reason).Inc()
			h.m.refused.WithLabelValues(d.Reason).Inc()
		}
		h.log.Warn("webhook: event dead-lettered", "id", d.ID, "source", d.Source, "reason", d.Reason, "err", d.Detail)
	}
	resp.DeadLettered = len(dead)

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(resp)
	return http.StatusOK
}

// skipPull reports whether e is a pull the projection would skip, and its
// registry instance had an event published (before, or earlier in this
// request: beat) less than PullHeartbeat of registry time ago.
func (h *webhook) skipPull(e events.Event, beat map[string]time.Time) bool {
	if e.Kind != events.Touched || e.Ref == nil || h.cfg.Pulls == nil {
		return false
	}
	h.mu.Lock()
	last := later(h.published[e.Source], beat[e.Source])
	h.mu.Unlock()
	if last.IsZero() || e.Time.Sub(last) >= h.cfg.PullHeartbeat {
		return false
	}
	fresh, err := h.cfg.Pulls.Fresh(e.Ref.Repo, e.Ref.Digest, e.Time)
	if err != nil {
		h.log.Warn("webhook: pull filter failed; publishing the pull", "err", err)
		return false
	}
	if fresh && h.m != nil {
		h.m.pullsSkipped.Inc()
	}
	return fresh
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// readBody reads the request body. Up to MaxBodyBytes it returns the
// whole body. Past that it keeps the first 64 KiB, reads on and discards
// up to maxBodyFactor times the limit, and returns what it kept, the size
// it read, and capped when it stopped at that bound with more unread.
func (h *webhook) readBody(r *http.Request) (body []byte, size int64, capped bool, err error) {
	return readCapped(r.Body, h.cfg.MaxBodyBytes)
}

// readCapped is readBody over any reader: the webhook's and the native
// endpoint's limits are read the same way.
func readCapped(r io.Reader, limit int64) (body []byte, size int64, capped bool, err error) {
	body, err = io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, 0, false, err
	}
	size = int64(len(body))
	if size <= limit {
		return body, size, false, nil
	}
	head := bytes.Clone(body[:min(len(body), tooLargeKeep)])
	body = nil
	n, err := io.CopyN(io.Discard, r, maxBodyFactor*limit-size)
	size += n
	switch {
	case errors.Is(err, io.EOF):
		return head, size, false, nil
	case err != nil:
		return nil, size, false, err
	}
	return head, size, true, nil
}

// refusedEvent is the Refused event that announces a dead-lettered Result.
func refusedEvent(res *Result, at time.Time) events.Event {
	ev := events.Event{V: events.Version, ID: refusedID(res.ID), Time: at, Received: at, Source: res.Source,
		Kind: events.Refused, Refused: &events.RefusedRef{Reason: res.Reason}}
	if events.ValidHost(res.Host) {
		ev.Host = res.Host
	}
	if events.ValidateRepo(res.Repo) == nil {
		ev.Refused.Repo = res.Repo
	}
	return ev
}

// refusedID derives a Refused event's ID from its dead letter's: "refused-"
// and the id, or, when that would not be a valid event id, the hash of the id.
func refusedID(id string) string {
	if s := "refused-" + id; events.ValidEventID(s) {
		return s
	}
	return "refused-sha256:" + digest.FromString(id).Encoded()
}

// unauthorized answers 401 and, at most once per
// UnauthorizedRefusalInterval, publishes a Refused event that says so. The
// event names no source or host: nothing of the request is trusted.
func (h *webhook) unauthorized(w http.ResponseWriter, r *http.Request, received time.Time) int {
	if h.m != nil {
		h.m.unauthorized.Inc()
		h.m.refused.WithLabelValues(ReasonUnauthorized).Inc()
	}
	h.log.Warn("webhook: unauthorized notification request", "remote", r.RemoteAddr)
	if h.takeUnauthorizedSlot(received) {
		ev := events.Event{V: events.Version, ID: fmt.Sprintf("refused-%s-%d", ReasonUnauthorized, received.UnixNano()),
			Time: received, Received: received, Kind: events.Refused, Refused: &events.RefusedRef{Reason: ReasonUnauthorized}}
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
		if _, err := h.cfg.Sink.PublishBatch(ctx, []events.Event{ev}); err != nil {
			h.log.Error("webhook: publishing the refusal of an unauthorized request failed", "err", err)
		}
		cancel()
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="refgc"`)
	return webhookError(w, http.StatusUnauthorized, "missing or wrong bearer token")
}

// takeUnauthorizedSlot reports whether an unauthorized refusal at t may be
// published, and if so records it.
func (h *webhook) takeUnauthorizedSlot(t time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.lastUnauthorized.IsZero() && t.Sub(h.lastUnauthorized) < UnauthorizedRefusalInterval {
		return false
	}
	h.lastUnauthorized = t
	return true
}

func (h *webhook) unavailable(w http.ResponseWriter, what string, err error, n int) int {
	h.log.Error("webhook: sink failed; answering 503 so that the registry retries",
		"op", what, "events", n, "err", err)
	w.Header().Set("Retry-After", h.retryAfter)
	return webhookError(w, http.StatusServiceUnavailable, "event log unavailable, retry later")
}

// authorized compares the bearer token with every accepted one, each in
// constant time.
func (h *webhook) authorized(r *http.Request) bool { return tokenIndex(r, h.tokens) >= 0 }

// tokenIndex returns the index of the accepted token the request bears as
// its bearer token, or -1. Every token is compared, each in constant time.
func tokenIndex(r *http.Request, tokens [][]byte) int {
	auth := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return -1
	}
	got := []byte(strings.TrimSpace(auth[len(prefix):]))
	found := -1
	for i, t := range tokens {
		if subtle.ConstantTimeCompare(got, t) == 1 {
			found = i
		}
	}
	return found
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
