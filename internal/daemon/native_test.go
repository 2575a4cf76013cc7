package daemon_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/events/schema"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// postNative posts a batch with a bearer token and returns the status and
// the decoded answer.
func postNative(t *testing.T, d *daemon.Daemon, token string, body []byte) (int, distribution.NativeResponse) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, d.URL()+daemon.NativePath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out distribution.NativeResponse
	if resp.StatusCode != http.StatusUnauthorized {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("answer %d %s: %v", resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode, out
}

func nativeBatch(t *testing.T, evs ...any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"events": evs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNativeEvents posts batches to POST /v1/events: accepted events reach
// the projection whatever their order, a retried batch dedupes, and what a
// source may not send, or cannot be read, is dead-lettered, counted and
// pauses its repository.
func TestNativeEvents(t *testing.T) {
	e := newEnv(t, envOpts{noStorage: true, noRegistry: true, native: []distribution.NativeSource{
		{Name: "quay", Tokens: []string{"quay-token"}},
		{Name: "mirror", Tokens: []string{"mirror-token"}, Kinds: []events.Kind{events.TagSet, events.TagDeleted}},
	}})
	m, l := digest.FromString("native manifest"), digest.FromString("native layer")
	at := e.now().UTC().Truncate(time.Second)
	// The tag comes before its manifest: order within a batch, or across
	// batches, does not matter to the projection.
	tagSet := events.Event{ID: "q-1", Time: at, Kind: events.TagSet, Tag: &events.Tag{Repo: "native/app", Name: "v1", Digest: m}}
	push := events.Event{ID: "q-2", Time: at, Source: "quay:replica-1", Kind: events.ManifestPushed, Manifest: &events.Manifest{
		Repo: "native/app", Digest: m, MediaType: events.MediaTypeOCIManifest, Size: 100,
		Blobs: []events.Descriptor{{Digest: l, Size: 1000}}}}
	ownKind := events.Event{ID: "q-3", Time: at, Kind: events.Collected,
		Collected: &events.CollectedRef{Node: events.NodeRef{Kind: events.NodeBlob, Digest: l}, Purged: true}}
	otherSource := events.Event{ID: "q-4", Time: at, Source: "harbor", Kind: events.TagDeleted, Tag: &events.Tag{Repo: "native/app", Name: "v1"}}
	badDigest := json.RawMessage(`{"id":"q-5","time":"2026-11-01T00:00:00Z","kind":"touched","ref":{"repo":"native/app","digest":"sha256:../x"}}`)
	batch := nativeBatch(t, tagSet, push, ownKind, otherSource, badDigest)

	code, resp := postNative(t, e.d, "quay-token", batch)
	if code != http.StatusOK {
		t.Fatalf("batch: %d %+v", code, resp)
	}
	want := []struct{ status, reason string }{{distribution.StatusAccepted, ""}, {distribution.StatusAccepted, ""},
		{distribution.StatusDeadLettered, distribution.ReasonKindNotAllowed},
		{distribution.StatusDeadLettered, distribution.ReasonSourceMismatch},
		{distribution.StatusDeadLettered, distribution.ReasonInvalidEvent}}
	if len(resp.Results) != len(want) || resp.Accepted != 2 || resp.DeadLettered != 3 {
		t.Fatalf("results: %+v", resp)
	}
	for i, w := range want {
		if r := resp.Results[i]; r.Status != w.status || r.Reason != w.reason || (w.reason == "") != (r.Seq != 0) {
			t.Errorf("result %d: %+v, want %s %s", i, r, w.status, w.reason)
		}
	}
	// The publisher's response was lost: it retries the whole batch.
	code, again := postNative(t, e.d, "quay-token", batch)
	if code != http.StatusOK || again.Duplicates != 2 || again.Results[0].Seq != resp.Results[0].Seq {
		t.Fatalf("retry: %d %+v", code, again)
	}
	// A source that may only move tags cannot push manifests.
	push2 := push
	push2.ID, push2.Source = "m-1", ""
	if code, r := postNative(t, e.d, "mirror-token", nativeBatch(t, push2)); code != http.StatusOK ||
		r.Results[0].Reason != distribution.ReasonKindNotAllowed {
		t.Fatalf("mirror push: %d %+v", code, r)
	}
	if n := metricSum(t, e.d, "refgc_native_refused_total"); n != 7 {
		t.Errorf("refgc_native_refused_total = %v, want 7 (the batch's three refusals twice, and the mirror's push)", n)
	}
	if code, _ := postNative(t, e.d, "wrong", batch); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if code, r := postNative(t, e.d, "quay-token", []byte(`[1,2]`)); code != http.StatusBadRequest || r.DeadLettered != 1 {
		t.Fatalf("not a batch: %d %+v", code, r)
	}

	regtest.WaitFor(t, "the native manifest", func() bool {
		ni, ok, err := e.d.Projection().Get(events.NodeRef{Kind: events.NodeManifest, Repo: "native/app", Digest: m})
		return err == nil && ok && ni.Present && ni.Count == 1
	})
	regtest.WaitFor(t, "the pause of native/app", func() bool {
		ps, err := e.d.Projection().Pauses()
		return err == nil && slices.ContainsFunc(ps, func(p refcount.Pause) bool { return p.Repo == "native/app" })
	})
	srcs, err := e.d.Projection().Sources()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(srcs, func(s refcount.SourceState) bool { return s.Source == "quay:replica-1" }) ||
		!slices.ContainsFunc(srcs, func(s refcount.SourceState) bool { return s.Source == "quay" }) {
		t.Errorf("sources: %+v (want quay and quay:replica-1, each with its watermark)", srcs)
	}

	// Dead letters keep the raw event and the reason.
	dresp, err := http.Get(e.d.URL() + daemon.DeadPath + "?limit=20")
	if err != nil {
		t.Fatal(err)
	}
	defer dresp.Body.Close()
	var dls []eventlog.StoredDeadLetter
	if err := json.NewDecoder(dresp.Body).Decode(&dls); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(dls, func(d eventlog.StoredDeadLetter) bool {
		return d.ID == "q-3" && d.Reason == distribution.ReasonKindNotAllowed && d.Source == "quay"
	}) {
		t.Errorf("dead letters: %+v", dls)
	}

	// The published schema is served, and the stored events obey it.
	sresp, err := http.Get(e.d.URL() + daemon.SchemaPath + "v1.json")
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	served, _ := io.ReadAll(sresp.Body)
	if want, _ := schema.JSON(1); sresp.StatusCode != http.StatusOK || !bytes.Equal(served, want) {
		t.Fatalf("schema: %d", sresp.StatusCode)
	}
	for _, ev := range []events.Event{tagSet, push} {
		ev.Received = at
		b, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.Validate(1, b); err != nil {
			t.Errorf("%s: %v", ev.ID, err)
		}
	}
}
