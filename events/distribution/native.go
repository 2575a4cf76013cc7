package distribution

// The native endpoint: POST /v1/events, where a registry that speaks
// refgc's own event contract (docs/EVENTS.md) posts batches of events,
// as an alternative to publishing to JetStream itself.
//
// Invariants:
//   - A request is authenticated by its bearer token, which names exactly
//     one configured source; a request without a known token gets 401 and
//     its body is never read.
//   - An event is stored only if it decodes and validates, its kind is one
//     its source may send, and its Source is the source's name (or the
//     name, ':' and an instance id); an empty Source becomes the name.
//     Every event the endpoint stores carries Received, the request's time.
//   - Anything else is dead-lettered with its reason, counted, and
//     announced by a Refused event naming its repository when it could be
//     read, as the webhook does: the projection may miss what it said, so
//     collection there waits for a reconcile.
//   - The answer is 200 with one result per event, in order, only after
//     the Sink has stored every event and dead letter; a failing Sink gets
//     503 and the publisher retries the whole batch (ids dedupe it).
//   - A body over the size limit is dead-lettered (its first 64 KiB) and
//     answered 413; one that is not a batch is dead-lettered and answered
//     400. A native publisher can act on these, unlike Distribution.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/prom"
)

// NativeKinds are the kinds a registry may publish: the others are refgc's
// own (the collector's, the reconciler's and ingest's) and are refused
// from any source.
var NativeKinds = []events.Kind{events.ManifestPushed, events.TagSet, events.TagDeleted, events.DigestDeleted,
	events.BlobPushed, events.BlobMounted, events.Touched, events.RepositoryDeleted, events.LabelAttached,
	events.LabelDetached, events.LegacyImageCreated, events.LegacyDerived}

// Dead-letter reasons of the native endpoint, besides the webhook's.
const (
	// ReasonKindNotAllowed: the source may not send events of that kind.
	ReasonKindNotAllowed = "kind_not_allowed"
	// ReasonSourceMismatch: the event names another source than the token's.
	ReasonSourceMismatch = "source_mismatch"
	// ReasonUnsupportedVersion: the envelope is newer than this refgc reads.
	ReasonUnsupportedVersion = "unsupported_version"
)

// NativeSource is one registry allowed to post events.
type NativeSource struct {
	// Name is the source: the events' Source must be Name or start with
	// Name and ':' (an instance of it, whose delivery refgc tracks apart).
	Name string `yaml:"name"`
	// Tokens are the bearer tokens that identify it (several, to rotate).
	Tokens []string `yaml:"tokens"`
	// Kinds it may send; empty means every kind of NativeKinds.
	Kinds []events.Kind `yaml:"kinds"`
}

// NativeConfig configures NewNativeHandler.
type NativeConfig struct {
	// Sink receives events and dead letters. Required.
	Sink Sink
	// Sources are the registries allowed to post. At least one is required.
	Sources []NativeSource
	// MaxBodyBytes limits a request body (default DefaultMaxBodySize).
	MaxBodyBytes int64
	// Now is the endpoint's clock (default time.Now): Event.Received.
	Now func() time.Time
	// PublishTimeout bounds the Sink's work for one request (default
	// DefaultWebhookPublishTimeout); past it the answer is 503.
	PublishTimeout time.Duration
	// RetryAfter is sent with 503 (default DefaultWebhookRetryAfter).
	RetryAfter time.Duration
	// Registerer receives the endpoint's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// NativeBatch is the body of POST /v1/events.
type NativeBatch struct {
	Events []json.RawMessage `json:"events"`
}

// Native result statuses.
const (
	StatusAccepted     = "accepted"
	StatusDuplicate    = "duplicate"
	StatusDeadLettered = "dead_lettered"
)

// NativeResult is what became of one event of a batch.
type NativeResult struct {
	ID     string `json:"id,omitempty"`
	Status string `json:"status"`
	// Seq is the event's sequence in the log (of its first copy, for a duplicate).
	Seq    uint64 `json:"seq,omitempty"`
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// NativeResponse is the JSON body of a 200 answer (and of 400 and 413,
// with the one dead letter).
type NativeResponse struct {
	Results      []NativeResult `json:"results"`
	Accepted     int            `json:"accepted"`
	Duplicates   int            `json:"duplicates"`
	DeadLettered int            `json:"deadLettered"`
}

type nativeSource struct {
	name  string
	kinds map[events.Kind]bool
}

type native struct {
	cfg        NativeConfig
	tokens     [][]byte
	owner      []int // owner[i] is the index in sources of tokens[i]
	sources    []nativeSource
	retryAfter string
	log        *slog.Logger
	m          *nativeMetrics
}

type nativeMetrics struct {
	requests *prometheus.CounterVec
	events   *prometheus.CounterVec
	refused  *prometheus.CounterVec
}

// NewNativeHandler returns the handler of native event batches; route it
// at POST /v1/events. It fails on a configuration that cannot work: no
// Sink, no source, a source without a name or token, a token shared by
// two sources, or a kind a registry may not send.
func NewNativeHandler(cfg NativeConfig) (http.Handler, error) {
	if cfg.Sink == nil {
		return nil, errors.New("distribution: NewNativeHandler without a Sink")
	}
	if len(cfg.Sources) == 0 {
		return nil, errors.New("distribution: native events need at least one source")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodySize
	}
	cfg.MaxBodyBytes = min(cfg.MaxBodyBytes, math.MaxInt64/maxBodyFactor)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultWebhookPublishTimeout
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultWebhookRetryAfter
	}
	h := &native{cfg: cfg, log: cfg.Logger,
		retryAfter: strconv.Itoa(int((cfg.RetryAfter + time.Second - 1) / time.Second))}
	if h.log == nil {
		h.log = slog.Default()
	}
	seen := map[string]bool{}
	for i, s := range cfg.Sources {
		if s.Name == "" || strings.ContainsAny(s.Name, ": \x00\r\n") || len(s.Name) > 128 {
			return nil, fmt.Errorf("distribution: native source %d: a name of at most 128 characters without ':' or spaces is required", i)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("distribution: native source %q is configured twice", s.Name)
		}
		seen[s.Name] = true
		src := nativeSource{name: s.Name, kinds: map[events.Kind]bool{}}
		kinds := s.Kinds
		if len(kinds) == 0 {
			kinds = NativeKinds
		}
		for _, k := range kinds {
			if !slices.Contains(NativeKinds, k) {
				return nil, fmt.Errorf("distribution: native source %q: kind %q is not one a registry may send (%v)", s.Name, k, NativeKinds)
			}
			src.kinds[k] = true
		}
		n := 0
		for _, t := range s.Tokens {
			if t == "" {
				continue
			}
			if tokenIndex(bearerRequest(t), h.tokens) >= 0 {
				return nil, fmt.Errorf("distribution: native source %q shares a token with another source", s.Name)
			}
			h.tokens = append(h.tokens, []byte(t))
			h.owner = append(h.owner, len(h.sources))
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("distribution: native source %q has no token", s.Name)
		}
		h.sources = append(h.sources, src)
	}
	if cfg.Registerer != nil {
		h.m = &nativeMetrics{
			requests: prom.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "refgc_native_requests_total",
				Help: "Native event batches answered, by HTTP status code.",
			}, []string{"code"})),
			events: prom.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "refgc_native_events_total",
				Help: "Native events received, by source and status (accepted, duplicate, dead_lettered).",
			}, []string{"source", "status"})),
			refused: prom.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "refgc_native_refused_total",
				Help: "Native events or batches refused and dead-lettered, by source and reason " +
					"(kind_not_allowed: the source may not send that kind); unauthorized requests by source \"\".",
			}, []string{"source", "reason"})),
		}
	}
	return h, nil
}

// bearerRequest is a request bearing token, to compare configured tokens.
func bearerRequest(token string) *http.Request {
	return &http.Request{Header: http.Header{"Authorization": []string{"Bearer " + token}}}
}

func (h *native) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := h.serve(w, r)
	if h.m != nil {
		h.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	}
}

func (h *native) serve(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return webhookError(w, http.StatusMethodNotAllowed, "events are POSTed")
	}
	received := h.cfg.Now().UTC()
	ti := tokenIndex(r, h.tokens)
	if ti < 0 {
		if h.m != nil {
			h.m.refused.WithLabelValues("", ReasonUnauthorized).Inc()
		}
		h.log.Warn("native events: unauthorized request", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="refgc"`)
		return webhookError(w, http.StatusUnauthorized, "missing or wrong bearer token")
	}
	src := &h.sources[h.owner[ti]]
	body, size, capped, err := readCapped(r.Body, h.cfg.MaxBodyBytes)
	if err != nil {
		return webhookError(w, http.StatusBadRequest, "cannot read the body")
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
	defer cancel()
	if size > h.cfg.MaxBodyBytes {
		if capped {
			w.Header().Set("Connection", "close")
		}
		res := tooLarge(body, size, h.cfg.MaxBodyBytes, capped)
		return h.whole(ctx, w, src, res.ID, res.Reason, res.Err, res.Raw, http.StatusRequestEntityTooLarge, received)
	}
	var batch NativeBatch
	if err := json.Unmarshal(body, &batch); err != nil || batch.Events == nil {
		if err == nil {
			err = errors.New(`want {"events": [...]}`)
		}
		return h.whole(ctx, w, src, rawID(body), ReasonMalformedJSON, err, body, http.StatusBadRequest, received)
	}

	resp := NativeResponse{Results: make([]NativeResult, len(batch.Events))}
	var evs []events.Event
	var at []int // at[j] is the result index of evs[j]
	var dead []deadNative
	for i, raw := range batch.Events {
		ev, reason, err := h.admit(src, raw)
		if reason != "" {
			res := &resp.Results[i]
			res.ID, res.Status, res.Reason, res.Error = ev.ID, StatusDeadLettered, reason, err.Error()
			if res.ID == "" {
				res.ID = rawID(raw)
			}
			dead = append(dead, deadNative{id: res.ID, reason: reason, err: err, raw: raw, repo: eventRepo(raw)})
			continue
		}
		ev.Received = received
		evs = append(evs, ev)
		at = append(at, i)
	}
	for _, d := range dead {
		evs = append(evs, refusedEvent(&Result{ID: d.id, Source: src.name, Reason: d.reason, Repo: d.repo}, received))
	}
	if len(evs) > 0 {
		pubs, err := h.cfg.Sink.PublishBatch(ctx, evs)
		if err != nil {
			return h.unavailable(w, err, len(evs))
		}
		for j, i := range at {
			res := &resp.Results[i]
			res.ID, res.Status = evs[j].ID, StatusAccepted
			if j < len(pubs) {
				res.Seq = pubs[j].Seq
				if pubs[j].Duplicate {
					res.Status = StatusDuplicate
				}
			}
		}
	}
	if err := h.deadLetter(ctx, src, dead, received); err != nil {
		return h.unavailable(w, err, len(dead))
	}
	for _, res := range resp.Results {
		switch res.Status {
		case StatusAccepted:
			resp.Accepted++
		case StatusDuplicate:
			resp.Duplicates++
		case StatusDeadLettered:
			resp.DeadLettered++
		}
		if h.m != nil {
			h.m.events.WithLabelValues(src.name, res.Status).Inc()
		}
	}
	writeNative(w, http.StatusOK, resp)
	return http.StatusOK
}

type deadNative struct {
	id, reason, repo string
	err              error
	raw              []byte
}

// admit decodes one event of a batch and checks it against its source's
// rights; a non-empty reason says why it is dead-lettered.
func (h *native) admit(src *nativeSource, raw json.RawMessage) (events.Event, string, error) {
	var ev events.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return ev, ReasonMalformedJSON, err
	}
	if ev.Source == "" {
		ev.Source = src.name
	}
	if ev.Source != src.name && !strings.HasPrefix(ev.Source, src.name+":") {
		return ev, ReasonSourceMismatch, fmt.Errorf("source %q is not %q or %q", clip(ev.Source), src.name, src.name+":<instance>")
	}
	if ev.V > events.Version {
		return ev, ReasonUnsupportedVersion, fmt.Errorf("%w: %d", events.ErrUnsupportedVersion, ev.V)
	}
	if ev.V == 0 {
		ev.V = events.Version
	}
	if !ev.Received.IsZero() {
		return ev, ReasonInvalidEvent, errors.New("received: set by refgc, not by publishers")
	}
	if err := ev.Validate(); err != nil {
		return ev, ReasonInvalidEvent, err
	}
	if !src.kinds[ev.Kind] {
		return ev, ReasonKindNotAllowed, fmt.Errorf("source %q may not send %s", src.name, ev.Kind)
	}
	return ev, "", nil
}

// eventRepo reads the repository a refused event names, if it is valid.
func eventRepo(raw []byte) string {
	var ev events.Event
	if json.Unmarshal(raw, &ev) != nil {
		return ""
	}
	if r := ev.Repository(); events.ValidateRepo(r) == nil {
		return r
	}
	return ""
}

// deadLetter stores the dead letters of a batch, counts and logs them.
func (h *native) deadLetter(ctx context.Context, src *nativeSource, dead []deadNative, received time.Time) error {
	for _, d := range dead {
		if err := h.cfg.Sink.DeadLetter(ctx, deadLetterOf(src.name, d, received)); err != nil {
			return err
		}
	}
	for _, d := range dead {
		if h.m != nil {
			h.m.refused.WithLabelValues(src.name, d.reason).Inc()
		}
		h.log.Warn("native events: event dead-lettered", "id", d.id, "source", src.name, "reason", d.reason, "err", d.err)
	}
	return nil
}

// whole dead-letters a request body that is not a batch, and answers code.
func (h *native) whole(ctx context.Context, w http.ResponseWriter, src *nativeSource, id, reason string, cause error,
	raw []byte, code int, received time.Time) int {
	d := deadNative{id: id, reason: reason, err: cause, raw: raw}
	ev := refusedEvent(&Result{ID: id, Source: src.name, Reason: reason}, received)
	if _, err := h.cfg.Sink.PublishBatch(ctx, []events.Event{ev}); err != nil {
		return h.unavailable(w, err, 1)
	}
	if err := h.deadLetter(ctx, src, []deadNative{d}, received); err != nil {
		return h.unavailable(w, err, 1)
	}
	writeNative(w, code, NativeResponse{DeadLettered: 1,
		Results: []NativeResult{{ID: id, Status: StatusDeadLettered, Reason: reason, Error: errText(cause)}}})
	return code
}

func deadLetterOf(source string, d deadNative, at time.Time) eventlog.DeadLetter {
	return eventlog.DeadLetter{ID: d.id, Source: source, Reason: d.reason, Detail: errText(d.err), Body: d.raw, Time: at}
}

func (h *native) unavailable(w http.ResponseWriter, err error, n int) int {
	h.log.Error("native events: sink failed; answering 503", "events", n, "err", err)
	w.Header().Set("Retry-After", h.retryAfter)
	return webhookError(w, http.StatusServiceUnavailable, "event log unavailable, retry later")
}

func writeNative(w http.ResponseWriter, code int, resp NativeResponse) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(resp)
}
