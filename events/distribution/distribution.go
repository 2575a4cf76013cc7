package distribution

// Translation of CNCF Distribution (v3.1.2) notifications into domain events.
//
// Invariants:
//   - Each registry event of an envelope is translated on its own: it
//     yields domain events, is dropped on purpose (a pull without a
//     digest), or is dead-lettered with one of the Reason* codes and its raw
//     bytes. One bad event never spoils its neighbours.
//   - A domain event's ID is the registry's event id, so a redelivered
//     notification dedupes on the event log. Should one registry event ever
//     yield several domain events, they get the ids id+"/"+suffix, stable
//     across redeliveries.
//   - Every domain event Translate returns has passed Event.Validate and
//     carries the registry host, Distribution's source.addr, as Host (empty
//     when the registry sends none). Received is left to the caller, which
//     knows when the notification arrived.
//   - The subject of a pushed manifest is never in the notification: it
//     comes only from reading the manifest through a ManifestReader. When
//     that read fails the event still translates, without a subject, and
//     the Result carries EnrichErr; the storage reconciler, which reads
//     every manifest, restores the missing edge later.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/refgc/refgc/events"
)

// DistributionEventsMediaType is the content type of Distribution's notification envelopes.
const DistributionEventsMediaType = "application/vnd.docker.distribution.events.v2+json"

// Distribution's event actions.
const (
	ActionPull   = "pull"
	ActionPush   = "push"
	ActionMount  = "mount"
	ActionDelete = "delete"
)

// Dead-letter reasons: a small fixed set, usable as a metric label.
const (
	// ReasonMalformedJSON: the envelope or the event is not JSON of the
	// notification format (syntax error, wrong field types).
	ReasonMalformedJSON = "malformed_json"
	// ReasonTooLarge: the envelope exceeds TranslateOptions.MaxBodySize.
	ReasonTooLarge = "too_large"
	// ReasonInvalidEvent: the event decodes but cannot become a valid
	// domain event (bad digest, repository or tag, missing fields, a target
	// that is neither a blob nor a manifest, an envelope with no events).
	ReasonInvalidEvent = "invalid_event"
	// ReasonUnknownAction: the action is none of pull, push, mount, delete.
	ReasonUnknownAction = "unknown_action"
)

// DeadLetterReasons lists every dead-letter reason Translate gives.
var DeadLetterReasons = []string{ReasonMalformedJSON, ReasonTooLarge, ReasonInvalidEvent, ReasonUnknownAction}

// DefaultMaxBodySize is the default limit on one notification envelope,
// in Translate and in the webhook. It covers the largest notification a
// registry with Distribution's default 4 MiB manifest limit sends with
// includereferences: the references are the manifest's descriptors with
// their annotations, re-encoded by encoding/json (which writes '<', '>' and
// '&' as six-byte \u escapes, so a manifest made of annotations full of them
// grows up to six times, 24 MiB) and indented (three spaces a level, a
// line a field), inside one envelope. Domain events carry no annotations,
// so what such a notification translates into stays below MaxEncodedSize;
// an event that would not is dead-lettered (ReasonTooLarge) all the same.
const DefaultMaxBodySize = 32 << 20

// DefaultEnrichTimeout bounds one manifest read during translation.
const DefaultEnrichTimeout = 10 * time.Second

// tooLargeKeep is how much of an oversized envelope a dead letter keeps.
const tooLargeKeep = 64 << 10

// DistributionEnvelope mirrors Distribution's notifications.Envelope. Its
// events stay raw so that each decodes, and fails, on its own.
type DistributionEnvelope struct {
	Events []json.RawMessage `json:"events"`
}

// DistributionEvent mirrors the wire format of Distribution v3.1.2's
// notifications.Event. (That package is not imported here: its init
// registers Prometheus collectors and expvars in global registries.)
type DistributionEvent struct {
	ID        string              `json:"id,omitempty"`
	Timestamp time.Time           `json:"timestamp"`
	Action    string              `json:"action,omitempty"`
	Target    DistributionTarget  `json:"target"`
	Request   DistributionRequest `json:"request"`
	Actor     DistributionActor   `json:"actor"`
	Source    DistributionSource  `json:"source"`
}

// DistributionTarget is the target of a notification: the content
// descriptor, where it lives, and, with includereferences, its references.
type DistributionTarget struct {
	v1.Descriptor
	Length         int64           `json:"length,omitempty"`
	Repository     string          `json:"repository,omitempty"`
	FromRepository string          `json:"fromRepository,omitempty"`
	URL            string          `json:"url,omitempty"`
	Tag            string          `json:"tag,omitempty"`
	References     []v1.Descriptor `json:"references,omitempty"`
}

// DistributionRequest is the request that caused a notification.
type DistributionRequest struct {
	ID        string `json:"id"`
	Addr      string `json:"addr,omitempty"`
	Host      string `json:"host,omitempty"`
	Method    string `json:"method"`
	UserAgent string `json:"useragent"`
}

// DistributionActor is who made the request, when the registry knows.
type DistributionActor struct {
	Name string `json:"name,omitempty"`
}

// DistributionSource is the registry instance that sent a notification.
type DistributionSource struct {
	Addr       string `json:"addr,omitempty"`
	InstanceID string `json:"instanceID,omitempty"`
}

// ManifestReader reads a manifest from the registry, to learn what a
// notification leaves out (the subject; the references when the registry
// runs without includereferences). Implementations return the exact bytes
// of the digest and the media type they were served with.
type ManifestReader interface {
	ReadManifest(ctx context.Context, repo string, d digest.Digest) (body []byte, mediaType string, err error)
}

// TranslateOptions configures Translate. The zero value translates without
// enrichment, with the default limits and the system clock.
type TranslateOptions struct {
	// Reader enriches manifest pushes. Nil disables enrichment: no subject
	// is ever found, and that is not reported as a failure.
	Reader ManifestReader
	// EnrichTimeout bounds one manifest read (default DefaultEnrichTimeout).
	EnrichTimeout time.Duration
	// MaxBodySize bounds the envelope (default DefaultMaxBodySize).
	MaxBodySize int64
	// Now stamps events whose registry timestamp is missing (default time.Now).
	Now func() time.Time
	// TagExpiry reads the image config of a manifest pushed by tag and, if
	// it has the label quay.expires-after (a number and s, m, h, d or w, as
	// Quay reads it), gives the tag an expiry that long after the push. It
	// needs a Reader that is also a ConfigReader.
	TagExpiry bool
}

// ExpiresAfterLabel is the image label by which users ask for a tag's expiry.
const ExpiresAfterLabel = "quay.expires-after"

// ConfigReader reads an image config blob, for the quay.expires-after label.
type ConfigReader interface {
	ReadConfig(ctx context.Context, repo string, d digest.Digest) ([]byte, error)
}

// Result is the outcome of translating one registry event.
type Result struct {
	// Index is the event's position in the envelope, or -1 when the
	// envelope as a whole could not be read.
	Index int
	// ID is the registry's event id (or, when it has none or is
	// unreadable, "raw:" and the hex sha256 of its raw bytes); Source is
	// "distribution:" and the registry instance.
	ID, Source string
	// Action is the registry's action, as sent ("" if unreadable).
	Action string
	// Time is the registry's timestamp.
	Time time.Time
	// Events are the domain events, each valid; empty when dropped or dead-lettered.
	Events []events.Event
	// Dropped, when set, says why the registry event needs no domain event.
	Dropped string
	// Reason is the dead-letter reason (one of DeadLetterReasons), or "".
	Reason string
	// Err details Reason.
	Err error
	// EnrichErr is set when reading a pushed manifest failed: Events are
	// still good but lack the subject (and, without includereferences,
	// the references).
	EnrichErr error
	// Raw is the registry event's JSON as received (for the envelope as a
	// whole when Index is -1; cut to 64 KiB when too large).
	Raw json.RawMessage
	// Repo and Host are the target repository and the registry host
	// (source.addr) the event names, as sent, or, for an event or an
	// envelope that does not decode, as far as its bytes can be read;
	// empty when unknown. They are not validated.
	Repo, Host string
}

// DeadLettered reports whether the event must go to the dead letters.
func (r *Result) DeadLettered() bool { return r.Reason != "" }

// Translate decodes a notification envelope and translates each of its
// events independently (see Result). It never fails as a whole: an
// unreadable envelope gives one dead-lettered Result with Index -1.
func Translate(ctx context.Context, body []byte, opts TranslateOptions) []Result {
	maxBody := opts.MaxBodySize
	if maxBody <= 0 {
		maxBody = DefaultMaxBodySize
	}
	if int64(len(body)) > maxBody {
		return []Result{tooLarge(body, int64(len(body)), maxBody, false)}
	}
	var env DistributionEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return []Result{envelopeFailure(body, ReasonMalformedJSON, fmt.Errorf("envelope: %w", err))}
	}
	if len(env.Events) == 0 {
		return []Result{envelopeFailure(body, ReasonInvalidEvent, errors.New("envelope holds no events"))}
	}
	out := make([]Result, len(env.Events))
	for i, raw := range env.Events {
		out[i] = translateOne(ctx, i, raw, &opts)
	}
	return out
}

func envelopeFailure(raw []byte, reason string, err error) Result {
	repo, src := peekNotification(raw)
	return Result{Index: -1, ID: rawID(raw), Source: distributionSource(src), Reason: reason, Err: err, Raw: raw,
		Repo: repo, Host: src.Addr}
}

// tooLarge is the dead-lettered Result of an envelope of size bytes, over
// limit, that starts with head; atLeast says that more bytes followed
// unread. It keeps at most the first 64 KiB.
func tooLarge(head []byte, size, limit int64, atLeast bool) Result {
	head = head[:min(len(head), tooLargeKeep)]
	what := fmt.Sprintf("%d bytes", size)
	if atLeast {
		what = "more than " + what
	}
	return envelopeFailure(head, ReasonTooLarge, fmt.Errorf("envelope of %s exceeds the limit of %d", what, limit))
}

// peekNotification reads, token by token, as much of a notification (an
// envelope or one event) as is well-formed, and returns the first target
// repository and the first source it names. It serves for input that does
// not decode: cut short, malformed further on, or of the wrong types.
func peekNotification(raw []byte) (repo string, src DistributionSource) {
	type frame struct {
		obj     bool   // an object (else an array)
		key     string // the key of the value being read, in an object
		wantKey bool   // the next token is a key
	}
	var stack []frame
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for repo == "" || src.Addr == "" || src.InstanceID == "" {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				stack = append(stack, frame{obj: d == '{', wantKey: d == '{'})
			default:
				stack = stack[:len(stack)-1]
				if n := len(stack); n > 0 && stack[n-1].obj {
					stack[n-1].wantKey = true
				}
			}
			continue
		}
		n := len(stack)
		if n == 0 {
			break // a scalar at the top: not a notification
		}
		top := &stack[n-1]
		if top.obj && top.wantKey {
			top.key, _ = tok.(string)
			top.wantKey = false
			continue
		}
		if top.obj {
			top.wantKey = true
		}
		v, ok := tok.(string)
		if !ok || n < 2 || !stack[n-2].obj {
			continue
		}
		switch parent := stack[n-2].key; {
		case parent == "target" && top.key == "repository" && repo == "":
			repo = v
		case parent == "source" && top.key == "addr" && src.Addr == "":
			src.Addr = v
		case parent == "source" && top.key == "instanceID" && src.InstanceID == "":
			src.InstanceID = v
		}
	}
	return repo, src
}

// rawID names content that carries no usable id by its hash.
func rawID(raw []byte) string { return "raw:" + digest.FromBytes(raw).Encoded() }

func translateOne(ctx context.Context, i int, raw json.RawMessage, opts *TranslateOptions) Result {
	res := Result{Index: i, Raw: raw, Source: "distribution"}
	var de DistributionEvent
	if err := json.Unmarshal(raw, &de); err != nil {
		res.ID = rawID(raw)
		var src DistributionSource
		res.Repo, src = peekNotification(raw)
		res.Source, res.Host = distributionSource(src), src.Addr
		res.Reason, res.Err = ReasonMalformedJSON, fmt.Errorf("event %d: %w", i, err)
		return res
	}
	res.ID = de.ID
	if res.ID == "" {
		res.ID = rawID(raw)
	}
	res.Action = de.Action
	res.Source = distributionSource(de.Source)
	res.Repo, res.Host = de.Target.Repository, de.Source.Addr
	res.Time = de.Timestamp
	if res.Time.IsZero() {
		if opts.Now != nil {
			res.Time = opts.Now()
		} else {
			res.Time = time.Now()
		}
	}
	ev := events.Event{V: events.Version, ID: res.ID, Time: res.Time, Source: res.Source}
	if events.ValidHost(de.Source.Addr) {
		// A host that could not be valid is left out rather than costing
		// the registry its event.
		ev.Host = de.Source.Addr
	}
	t := &de.Target
	fail := func(reason string, err error) Result {
		res.Reason, res.Err = reason, err
		return res
	}

	switch de.Action {
	case ActionPush:
		switch targetKind(t) {
		case targetManifest:
			if err := checkRef(t.Repository, t.Digest); err != nil {
				return fail(ReasonInvalidEvent, err)
			}
			m, enrichErr := manifestPushed(ctx, t, opts)
			if opts.TagExpiry && m.Tag != "" {
				m.TagExpires = tagExpiry(ctx, opts, m, res.Time)
			}
			ev.Kind, ev.Manifest = events.ManifestPushed, m
			res.EnrichErr = enrichErr
		case targetBlob:
			ev.Kind, ev.Blob = events.BlobPushed, &events.Blob{Repo: t.Repository, Digest: t.Digest, Size: targetSize(t)}
		default:
			return fail(ReasonInvalidEvent, fmt.Errorf("push target %q is neither a manifest nor a blob", clip(t.MediaType)))
		}
	case ActionMount:
		ev.Kind, ev.Blob = events.BlobMounted, &events.Blob{Repo: t.Repository, Digest: t.Digest, Size: targetSize(t), From: t.FromRepository}
	case ActionPull:
		if t.Digest == "" {
			res.Dropped = "pull without a digest"
			return res
		}
		ev.Kind, ev.Ref = events.Touched, &events.RepoDigest{Repo: t.Repository, Digest: t.Digest}
	case ActionDelete:
		switch {
		case t.Digest != "":
			ev.Kind, ev.Ref = events.DigestDeleted, &events.RepoDigest{Repo: t.Repository, Digest: t.Digest}
		case t.Tag != "":
			ev.Kind, ev.Tag = events.TagDeleted, &events.Tag{Repo: t.Repository, Name: t.Tag}
		default:
			return fail(ReasonInvalidEvent, errors.New("delete names neither a digest nor a tag"))
		}
	default:
		return fail(ReasonUnknownAction, fmt.Errorf("unknown action %q", clip(de.Action)))
	}
	if err := ev.Validate(); err != nil {
		return fail(ReasonInvalidEvent, err)
	}
	if ev.Kind == events.ManifestPushed && len(ev.Manifest.Blobs)+len(ev.Manifest.Children) > 1000 {
		// Only a manifest's references can make an event large.
		if b, err := events.Encode(ev); err != nil || len(b) > events.MaxEncodedSize {
			return fail(ReasonTooLarge, fmt.Errorf("manifest push of %d references encodes over %d bytes",
				len(ev.Manifest.Blobs)+len(ev.Manifest.Children), events.MaxEncodedSize))
		}
	}
	res.Events = []events.Event{ev}
	return res
}

func distributionSource(s DistributionSource) string {
	switch {
	case s.InstanceID != "":
		return "distribution:" + s.InstanceID
	case s.Addr != "":
		return "distribution:" + s.Addr
	}
	return "distribution"
}

// checkRef validates what is sent to the registry before reading a manifest.
func checkRef(repo string, d digest.Digest) error {
	if err := events.ValidateRepo(repo); err != nil {
		return &events.ValidationError{Field: "target.repository", Reason: err.Error()}
	}
	if err := events.ValidateDigest(d); err != nil {
		return &events.ValidationError{Field: "target.digest", Reason: err.Error()}
	}
	return nil
}

type targetClass int

const (
	targetOther targetClass = iota
	targetManifest
	targetBlob
)

// targetKind tells a manifest from a blob: by the URL's path when there is
// one, else by the media type (blob events always say application/octet-stream).
func targetKind(t *DistributionTarget) targetClass {
	if t.URL != "" {
		if u, err := url.Parse(t.URL); err == nil {
			switch {
			case strings.Contains(u.Path, "/"+t.Repository+"/manifests/"):
				return targetManifest
			case strings.Contains(u.Path, "/"+t.Repository+"/blobs/"):
				return targetBlob
			}
		}
	}
	mt := events.BaseMediaType(t.MediaType)
	switch {
	case events.IsManifestMediaType(mt):
		return targetManifest
	case mt == "application/octet-stream":
		return targetBlob
	}
	return targetOther
}

func targetSize(t *DistributionTarget) int64 {
	if t.Size == 0 {
		return t.Length
	}
	return t.Size
}

// canHaveSubject reports whether manifests of media type mt may carry a
// subject (or whether the type is unknown, and reading the body will tell).
func canHaveSubject(mt string) bool {
	switch mt {
	case events.MediaTypeDockerManifest, events.MediaTypeDockerList, events.MediaTypeDockerSchema1, events.MediaTypeDockerSchema1JWS:
		return false
	}
	return true
}

// manifestPushed builds the body of ManifestPushed from the target and,
// when needed and possible, the manifest itself.
func manifestPushed(ctx context.Context, t *DistributionTarget, opts *TranslateOptions) (*events.Manifest, error) {
	m := &events.Manifest{Repo: t.Repository, Digest: t.Digest, Size: targetSize(t), Tag: t.Tag}
	if mt := events.BaseMediaType(t.MediaType); !events.IsGenericMediaType(mt) {
		m.MediaType = mt
	}
	fromEvent := len(t.References) > 0
	if fromEvent {
		m.Blobs, m.Children = events.SplitReferences(m.MediaType, t.References)
	}
	if opts.Reader == nil || (fromEvent && !canHaveSubject(m.MediaType)) {
		return m, nil
	}
	refs, err := readRefs(ctx, opts, t.Repository, t.Digest)
	if err != nil {
		// Without the manifest its subject is unknown: collecting it as an
		// unreferenced revision could delete a referrer whose subject lives.
		m.Unverified = true
		return m, fmt.Errorf("enrich %s@%s: %w", t.Repository, t.Digest, err)
	}
	m.Subject = refs.Subject
	if m.MediaType == "" {
		m.MediaType = refs.MediaType
	}
	if !fromEvent {
		m.Blobs, m.Children = refs.Blobs, refs.Children
	}
	return m, nil
}

func readRefs(ctx context.Context, opts *TranslateOptions, repo string, d digest.Digest) (events.ManifestRefs, error) {
	timeout := opts.EnrichTimeout
	if timeout <= 0 {
		timeout = DefaultEnrichTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, mt, err := opts.Reader.ReadManifest(ctx, repo, d)
	if err != nil {
		return events.ManifestRefs{}, err
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return events.ManifestRefs{}, fmt.Errorf("%w: read %s", ErrDigestMismatch, got)
	}
	return events.ParseManifest(mt, body)
}

// ErrManifestNotFound is returned by RegistryManifestReader when the
// registry answers 404: the manifest an event announced is not there (it
// was deleted since, or the registry and the events disagree).
var ErrManifestNotFound = errors.New("events: manifest not found in the registry")

// ErrDigestMismatch is returned when a manifest read from the registry does
// not hash to the digest it was asked for.
var ErrDigestMismatch = errors.New("events: manifest content does not match its digest")

// defaultRegistryClient is used by a RegistryManifestReader without a Client.
var defaultRegistryClient = &http.Client{Timeout: 30 * time.Second}

// RegistryManifestReader is a ManifestReader over the registry's HTTP API
// (GET /v2/<repo>/manifests/<digest>). It authenticates with a static
// bearer token or, if Token is empty and Username is set, basic auth; it
// does not run the token-server dance. It refuses bodies over MaxSize and
// bodies that do not hash to the digest asked for (so signed schema1
// manifests, whose digest covers the payload only, cannot be read; v3
// registries do not serve them).
type RegistryManifestReader struct {
	// BaseURL is the registry's root, such as https://registry.example.com.
	BaseURL string
	// Client makes the requests; nil uses a client with a 30 s timeout.
	Client             *http.Client
	Token              string
	Username, Password string
	// MaxSize bounds a manifest (0: MaxManifestSize).
	MaxSize int64
}

// manifestAccept is the Accept header of manifest reads.
var manifestAccept = strings.Join(events.ManifestMediaTypes(), ", ")

// ReadManifest implements ManifestReader.
func (r *RegistryManifestReader) ReadManifest(ctx context.Context, repo string, d digest.Digest) ([]byte, string, error) {
	if err := checkRef(repo, d); err != nil {
		return nil, "", err
	}
	u := strings.TrimRight(r.BaseURL, "/") + "/v2/" + repo + "/manifests/" + d.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", fmt.Errorf("events: read manifest: %w", err)
	}
	req.Header.Set("Accept", manifestAccept)
	switch {
	case r.Token != "":
		req.Header.Set("Authorization", "Bearer "+r.Token)
	case r.Username != "":
		req.SetBasicAuth(r.Username, r.Password)
	}
	client := r.Client
	if client == nil {
		client = defaultRegistryClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("events: read manifest %s@%s: %w", repo, d, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, "", fmt.Errorf("%w: %s@%s", ErrManifestNotFound, repo, d)
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, "", fmt.Errorf("events: read manifest %s@%s: registry answered %s: %s",
			repo, d, resp.Status, bytes.TrimSpace(msg))
	}
	limit := r.MaxSize
	if limit <= 0 {
		limit = events.MaxManifestSize
	}
	if resp.ContentLength > limit {
		return nil, "", fmt.Errorf("%w: %s@%s is %d bytes", events.ErrManifestTooLarge, repo, d, resp.ContentLength)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", fmt.Errorf("events: read manifest %s@%s: %w", repo, d, err)
	}
	if int64(len(body)) > limit {
		return nil, "", fmt.Errorf("%w: %s@%s exceeds %d bytes", events.ErrManifestTooLarge, repo, d, limit)
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return nil, "", fmt.Errorf("%w: %s@%s served %s", ErrDigestMismatch, repo, d, got)
	}
	return body, events.BaseMediaType(resp.Header.Get("Content-Type")), nil
}

// clip shortens s for an error message or a log line.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// isImageConfig reports whether mt is an image config's media type.
func isImageConfig(mt string) bool {
	return mt == v1.MediaTypeImageConfig || mt == "application/vnd.docker.container.image.v1+json"
}

// expiresAfterRE is Quay's convert_to_timedelta: a count and a unit.
var expiresAfterRE = regexp.MustCompile(`^([0-9]{1,6})([smhdw])$`)

// ParseExpiresAfter reads a quay.expires-after value.
func ParseExpiresAfter(s string) (time.Duration, bool) {
	m := expiresAfterRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, false
	}
	n, _ := strconv.Atoi(m[1])
	unit := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour,
		"d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
	return time.Duration(n) * unit, n > 0
}

// tagExpiry reads the quay.expires-after label of an image manifest's
// config; zero when there is none, or it cannot be read (the tag then
// never expires: the safe side).
func tagExpiry(ctx context.Context, opts *TranslateOptions, m *events.Manifest, pushed time.Time) time.Time {
	cr, ok := opts.Reader.(ConfigReader)
	if !ok || len(m.Blobs) == 0 || !isImageConfig(m.Blobs[0].MediaType) {
		return time.Time{}
	}
	timeout := opts.EnrichTimeout
	if timeout <= 0 {
		timeout = DefaultEnrichTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b, err := cr.ReadConfig(ctx, m.Repo, m.Blobs[0].Digest)
	if err != nil {
		return time.Time{}
	}
	var cfg struct {
		Config struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
	}
	if json.Unmarshal(b, &cfg) != nil {
		return time.Time{}
	}
	d, ok := ParseExpiresAfter(cfg.Config.Labels[ExpiresAfterLabel])
	if !ok {
		return time.Time{}
	}
	return pushed.Add(d).UTC()
}
