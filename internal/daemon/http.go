package daemon

import (
	"bufio"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/events/schema"
	"github.com/refgc/refgc/refcount"
)

// HTTP paths the daemon serves.
const (
	WebhookPath   = "/v1/distribution/events"
	NativePath    = "/v1/events"
	SchemaPath    = "/v1/events/schema/"
	DumpPath      = "/v1/dump"
	NodesPath     = "/v1/nodes"
	RestorePath   = "/v1/restore"
	CollectPath   = "/v1/collect"
	WhyPath       = "/v1/why"
	ImpactPath    = "/v1/impact"
	UsagePath     = "/v1/usage"
	DeadPath      = "/v1/deadletters"
	VerifyPath    = "/v1/verify"
	ReconcilePath = "/v1/reconcile"
	RebuildPath   = "/v1/rebuild"
)

func (d *Daemon) routes(hook, native http.Handler) http.Handler {
	mux := http.NewServeMux()
	if hook != nil {
		mux.Handle("POST "+WebhookPath, hook)
	}
	if native != nil {
		mux.Handle("POST "+NativePath, native)
	}
	mux.HandleFunc("GET "+SchemaPath+"{file}", eventSchema)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", d.readyz)
	admin := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, d.adminOnly(h)) }
	admin("GET "+DumpPath, d.dump)
	admin("GET "+NodesPath, d.nodes)
	admin("POST "+RestorePath, d.restore)
	admin("POST "+CollectPath, d.collect)
	admin("GET "+WhyPath, d.why)
	admin("GET "+ImpactPath, d.impact)
	admin("GET "+UsagePath, d.usage)
	admin("GET "+DeadPath, d.deadLetters)
	admin("GET "+VerifyPath, d.verify)
	admin("POST "+ReconcilePath, d.reconcile)
	admin("POST "+RebuildPath, d.rebuild)
	admin("POST "+PurgePath, d.purge)
	return mux
}

// adminOnly requires the admin bearer token, when one is configured.
func (d *Daemon) adminOnly(h http.HandlerFunc) http.Handler {
	want := d.cfg.AdminToken
	if want == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			d.adminUnauthorized.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="refgc admin"`)
			http.Error(w, "admin token required", http.StatusUnauthorized)
			return
		}
		h(w, r)
	})
}

// Ready reports why the daemon is not ready, or nil: collection must not
// be halted, the follower must be running with a lag of at most
// ReadyMaxLag, and NATS connected.
func (d *Daemon) Ready() error {
	if why := d.halted.Load(); why != nil {
		return fmt.Errorf("collection halted: %s", *why)
	}
	switch {
	case !d.followerUp.Load():
		return errors.New("follower not running")
	case d.nc.Status() != nats.CONNECTED:
		return fmt.Errorf("event log unreachable: nats %s", d.nc.Status())
	case d.fol.Lag() > d.cfg.ReadyMaxLag:
		return fmt.Errorf("follower lag %d over %d", d.fol.Lag(), d.cfg.ReadyMaxLag)
	}
	return nil
}

// readyz answers 200 while the daemon can take notifications, with the
// collection's view in detail: a paused collection, or a delivery
// watermark far behind, is no reason to stop taking notifications (that
// would block the registries' queues), so it shows in the body only.
func (d *Daemon) readyz(w http.ResponseWriter, _ *http.Request) {
	detail := struct {
		Status string `json:"status"`
		// Reason is why the daemon is not ready.
		Reason     string          `json:"reason,omitempty"`
		Collection *collector.View `json:"collection,omitempty"`
		// WatermarkLagSeconds is how far the bound of eligibility is behind the clock.
		WatermarkLagSeconds float64 `json:"watermarkLagSeconds,omitempty"`
		// Follower is how far the projection is behind the log (the first
		// catch-up after a start shows here).
		Follower FollowerProgress `json:"follower"`
		// Pass is the reconcile, verify or rebuild pass running now.
		Pass *PassProgress `json:"pass,omitempty"`
		// Storage says how objects are deleted: "registry" (storage, and
		// owners where configured), "owners only" (no storage: no
		// reconcile against it), or "none" (nothing is collected).
		Storage string `json:"storage"`
		// Reconcile is "off" when there is no storage to reconcile against.
		Reconcile string `json:"reconcile,omitempty"`
	}{Status: "ok", Follower: d.FollowerProgress(), Storage: "registry"}
	switch {
	case d.cfg.Storage == nil && d.cfg.Collector.OwnersOnly:
		detail.Storage, detail.Reconcile = "owners only", "off: no registry storage (collector.ownersOnly); every deletion goes to its owner"
	case d.cfg.Storage == nil:
		detail.Storage, detail.Reconcile = "none", "off: no registry storage; nothing is collected"
	}
	code := http.StatusOK
	if err := d.Ready(); err != nil {
		detail.Status, detail.Reason, code = "not ready", err.Error(), http.StatusServiceUnavailable
	}
	if pp, ok := d.PassProgress(); ok && pp.Running {
		detail.Pass = &pp
	}
	if d.col != nil && code == http.StatusOK {
		now := d.now()
		if v, err := d.col.View(now); err == nil {
			detail.Collection = &v
			detail.WatermarkLagSeconds = now.Sub(v.Bound).Seconds()
		}
	}
	writeJSON(w, code, detail)
}

func (d *Daemon) dump(w http.ResponseWriter, r *http.Request) {
	if at := r.URL.Query().Get("at"); at != "" {
		d.dumpAt(w, r, at)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	if err := d.proj.Dump(bw); err != nil {
		d.log.Error("dump", "err", err)
		return
	}
	_ = bw.Flush()
}

// nodes answers GET /v1/nodes?kind=&repo=&name=&digest= with one node's
// NodeInfo, or /v1/nodes?stats with the projection's Stats.
func (d *Daemon) nodes(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("kind") == "" {
		st, err := d.proj.Stats()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, st)
		return
	}
	ref := events.NodeRef{Kind: events.NodeKind(q.Get("kind")), Repo: q.Get("repo"), Name: q.Get("name"),
		Digest: digest.Digest(q.Get("digest"))}
	ni, ok, err := d.proj.Get(ref)
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
	case !ok:
		http.Error(w, "no such node", http.StatusNotFound)
	default:
		writeJSON(w, http.StatusOK, ni)
	}
}

func (d *Daemon) restore(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if tag := q.Get("tag"); tag != "" {
		d.restoreTag(w, r, q.Get("repo"), tag)
		return
	}
	res, err := d.Restore(r.Context(), q.Get("repo"), q.Get("digest"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (d *Daemon) collect(w http.ResponseWriter, r *http.Request) {
	dry, _ := strconv.ParseBool(r.URL.Query().Get("dry_run"))
	rep, err := d.Collect(r.Context(), dry)
	if err != nil {
		http.Error(w, err.Error(), errorCode(err))
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// errorCode is 409 for what the daemon's state refuses, 500 otherwise.
func errorCode(err error) int {
	if errors.Is(err, ErrNoStorage) || errors.Is(err, ErrCollectionHalted) || errors.Is(err, ErrNotLeader) ||
		errors.Is(err, reconcile.ErrRebuildTarget) || errors.Is(err, collector.ErrPaused) {
		return http.StatusConflict
	}
	if errors.Is(err, ErrRebuildOut) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// verify answers GET /v1/verify with the Drift of a pass that changes
// nothing (200 whether or not it is clean).
func (d *Daemon) verify(w http.ResponseWriter, r *http.Request) {
	drift, err := d.Verify(r.Context())
	if err != nil {
		http.Error(w, err.Error(), errorCode(err))
		return
	}
	writeJSON(w, http.StatusOK, drift)
}

// reconcile answers POST /v1/reconcile?apply=bool (a dry run by default).
func (d *Daemon) reconcile(w http.ResponseWriter, r *http.Request) {
	apply := false
	if v := r.URL.Query().Get("apply"); v != "" {
		var err error
		if apply, err = strconv.ParseBool(v); err != nil {
			http.Error(w, "apply: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	drift, err := d.Reconcile(r.Context(), apply)
	if err != nil {
		http.Error(w, err.Error(), errorCode(err))
		return
	}
	writeJSON(w, http.StatusOK, drift)
}

// rebuild answers POST /v1/rebuild?out=NAME: a file name in the
// rebuild directory (Config.RebuildDir), or an absolute path directly in
// it, that does not exist yet.
func (d *Daemon) rebuild(w http.ResponseWriter, r *http.Request) {
	path, err := d.rebuildTarget(r.URL.Query().Get("out"))
	if err != nil {
		http.Error(w, err.Error(), errorCode(err))
		return
	}
	rep, err := d.Rebuild(r.Context(), path)
	if err != nil {
		http.Error(w, err.Error(), errorCode(err))
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// why answers GET /v1/why?ref=… with the chain that keeps a node alive.
func (d *Daemon) why(w http.ResponseWriter, r *http.Request) {
	ref, err := events.ParseRef(r.URL.Query().Get("ref"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := d.proj.Why(ref)
	switch {
	case errors.Is(err, refcount.ErrUnknownNode):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// impact answers GET /v1/impact?ref=… with what deleting a tag or a
// manifest revision would free.
func (d *Daemon) impact(w http.ResponseWriter, r *http.Request) {
	ref, err := events.ParseRef(r.URL.Query().Get("ref"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := d.proj.Impact(ref, time.Now())
	switch {
	case errors.Is(err, refcount.ErrUnknownNode):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// usage answers GET /v1/usage with storage accounted by repository.
func (d *Daemon) usage(w http.ResponseWriter, _ *http.Request) {
	us, err := d.proj.Usage()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, us)
}

// deadLetters answers GET /v1/deadletters?limit=N with the newest
// notifications that could not become events, and why.
func (d *Daemon) deadLetters(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			http.Error(w, "limit: a number from 1 to 10000", http.StatusBadRequest)
			return
		}
		limit = n
	}
	dls, err := eventlog.ReadDeadLetters(r.Context(), d.js, "", limit)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if dls == nil {
		dls = []eventlog.StoredDeadLetter{}
	}
	writeJSON(w, http.StatusOK, dls)
}

// eventSchema answers GET /v1/events/schema/v1.json with the published
// JSON Schema of that envelope version.
func eventSchema(w http.ResponseWriter, r *http.Request) {
	var v int
	if _, err := fmt.Sscanf(r.PathValue("file"), "v%d.json", &v); err != nil {
		http.NotFound(w, r)
		return
	}
	b, err := schema.JSON(v)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/schema+json")
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("daemon: digest %q: %w", s, err)
	}
	return d, nil
}
