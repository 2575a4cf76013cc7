package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

// TestOwnersOnly starts serve without storage, every object of its one
// source owned: native events come in, a pass deletes through the owner
// (tags at their window's end too), a tag is restored through the owner,
// a dead letter's pause is lifted without a storage walk, and /readyz and
// the missing webhook say that there is no storage.
func TestOwnersOnly(t *testing.T) {
	e := newEnv(t, envOpts{ownersOnly: true, timeMachine: time.Hour,
		owners: []daemon.OwnerConfig{{Source: "quay", Timeout: 5 * time.Second}},
		native: []distribution.NativeSource{{Name: "quay", Tokens: []string{"quay-token"}}}})
	nc, err := eventlog.Connect(e.d.NATSURL(), eventlog.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var mu sync.Mutex
	asked := map[events.NodeKind]int{}
	answer := func(status owner.Status, items []owner.Item, stmt func(owner.Item) []events.Event) owner.Response {
		var resp owner.Response
		for _, it := range items {
			resp.Results = append(resp.Results, owner.Result{Intent: it.Intent, Status: status, Statements: stmt(it)})
		}
		return resp
	}
	m, l := digest.FromString("owned manifest"), digest.FromString("owned layer")
	at := e.now().UTC()
	svc, err := owner.AddService(nc, owner.ServiceConfig{Source: "quay",
		Handler: func(_ context.Context, req owner.Request) (owner.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, it := range req.Items {
				asked[it.Node.Kind]++
			}
			return answer(owner.StatusDeleted, req.Items, func(owner.Item) []events.Event { return nil }), nil
		},
		Restore: func(_ context.Context, req owner.Request) (owner.Response, error) {
			return answer(owner.StatusRestored, req.Items, func(it owner.Item) []events.Event {
				return []events.Event{{Kind: events.TagSet, Time: at.Add(2 * time.Second), Tag: &events.Tag{Repo: it.Node.Repo, Name: it.Node.Name, Digest: m}}}
			}), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	readyz := func() map[string]any {
		t.Helper()
		resp, err := http.Get(e.d.URL() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("readyz %d: %v", resp.StatusCode, err)
		}
		return out
	}
	if r := readyz(); r["storage"] != "owners only" || !strings.HasPrefix(r["reconcile"].(string), "off") {
		t.Fatalf("/readyz does not say that there is no storage: %v", r)
	}
	if resp, err := http.Post(e.d.WebhookURL(), "application/json", strings.NewReader("{}")); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the Distribution webhook is served without storage: %v %v", resp, err)
	}

	post := func(evs ...any) {
		t.Helper()
		if code, r := postNative(t, e.d, "quay-token", nativeBatch(t, evs...)); code != http.StatusOK {
			t.Fatalf("post: %d %+v", code, r)
		}
	}
	node := func(n events.NodeRef) bool {
		ni, ok, err := e.d.Projection().Get(n)
		return err == nil && ok && ni.Present
	}
	mref := events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}
	post(events.Event{ID: "p-1", Time: at, Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "app", Digest: m,
		MediaType: events.MediaTypeOCIManifest, Size: 10, Blobs: []events.Descriptor{{Digest: l, Size: 100}}}},
		events.Event{ID: "p-2", Time: at, Kind: events.TagSet, Tag: &events.Tag{Repo: "app", Name: "v1", Digest: m}},
		events.Event{ID: "p-3", Time: at.Add(time.Second), Kind: events.TagDeleted, Tag: &events.Tag{Repo: "app", Name: "v1"}},
		json.RawMessage(`{"id":"p-4","time":"2026-11-01T00:00:00Z","kind":"touched","ref":{"repo":"app","digest":"sha256:../x"}}`))
	regtest.WaitFor(t, "the tag in the time machine", func() bool {
		tm, err := e.d.Projection().TimeMachine("app")
		return err == nil && len(tm) == 1
	})
	regtest.WaitFor(t, "the dead letter's pause", func() bool {
		ps, err := e.d.Projection().Pauses()
		return err == nil && len(ps) > 0
	})

	post(events.Event{ID: "p-6", Time: at, Kind: events.TagSet, Tag: &events.Tag{Repo: "other", Name: "v1", Digest: m}})
	regtest.WaitFor(t, "a tag of another repository", func() bool {
		return node(events.NodeRef{Kind: events.NodeTag, Repo: "other", Name: "v1"})
	})
	if _, err := e.d.Purge(context.Background(), "other", false); !errors.Is(err, daemon.ErrOwnedRepository) {
		t.Fatalf("refgc purged a repository its owner keeps: %v", err)
	}
	if got, err := e.d.RestoreTag(context.Background(), "app", "v1"); err != nil || got.Manifest != mref {
		t.Fatalf("restore through the owner: %+v %v", got, err)
	}
	post(events.Event{ID: "p-5", Time: at.Add(3 * time.Second), Kind: events.TagDeleted, Tag: &events.Tag{Repo: "app", Name: "v1"}})
	e.advance(2 * time.Hour)
	regtest.Drain(t, testGrace, testRetention, e.advance, func() {
		if rep, err := e.d.Collect(context.Background(), false); err != nil || rep.Errors > 0 {
			t.Fatalf("pass without storage: %+v %v", rep, err)
		}
	})
	if ps, err := e.d.Projection().Pauses(); err != nil || len(ps) > 0 {
		t.Fatalf("the pause stayed: %+v %v", ps, err)
	}
	if node(mref) || node(events.NodeRef{Kind: events.NodeBlob, Digest: l}) {
		t.Fatal("the owned manifest and blob stayed")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []events.NodeKind{events.NodeTag, events.NodeManifest, events.NodeLayer, events.NodeBlob} {
		if asked[k] == 0 {
			t.Errorf("the owner was never asked about a %s (asked %v)", k, asked)
		}
	}
	if n := metricSum(t, e.d, "refgc_collector_owner_errors_total"); n != 0 {
		t.Errorf("%v owner errors", n)
	}
}
