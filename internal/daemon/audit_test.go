package daemon_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

func TestAdminWhyAndImpact(t *testing.T) {
	e := newEnv(t, envOpts{})
	img := e.reg.PushRandom(t, "app:v1", 2)
	e.settle()
	get := func(path, ref string, out any) int {
		t.Helper()
		resp, err := http.Get(e.d.URL() + path + "?" + url.Values{"ref": {ref}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Logf("GET %s %s: %d %s", path, ref, resp.StatusCode, b)
			return resp.StatusCode
		}
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
		return 200
	}
	layer := regtest.BlobDigests(t, img)[1]
	var why refcount.Why
	if code := get(daemon.WhyPath, "blob:"+layer.String(), &why); code != 200 {
		t.Fatalf("why: %d", code)
	}
	if why.Root != "tag" || len(why.Chain) != 4 || why.Chain[0].Node != (events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "v1"}) {
		t.Fatalf("why: %+v", why)
	}
	var im refcount.Impact
	if code := get(daemon.ImpactPath, "app:v1", &im); code != 200 {
		t.Fatalf("impact: %d", code)
	}
	// The tag, the manifest, its content blob, and config + 2 layers as links and blobs.
	if im.Nodes != 9 || im.Bytes == 0 {
		t.Fatalf("impact: %+v", im)
	}
	if code := get(daemon.WhyPath, "app:nope", &why); code != http.StatusNotFound {
		t.Fatalf("why of an unknown tag: %d", code)
	}
	if code := get(daemon.ImpactPath, "../etc:x", &im); code != http.StatusBadRequest {
		t.Fatalf("impact of a bad name: %d", code)
	}
	var us []refcount.RepoUsage
	resp, err := http.Get(e.d.URL() + daemon.UsagePath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&us); err != nil {
		t.Fatal(err)
	}
	var app *refcount.RepoUsage
	for i := range us {
		if us[i].Repo == "app" {
			app = &us[i]
		}
	}
	if app == nil || app.Tags != 1 || app.Manifests != 1 || app.Layers != 3 || app.Bytes != im.Bytes {
		t.Fatalf("usage of app: %+v (impact bytes %d)", app, im.Bytes)
	}
	e.mustPull("app:v1") // nothing changed
}

func TestAdminToken(t *testing.T) {
	e := newEnv(t, envOpts{noStorage: true, noRegistry: true, adminToken: "s3cret"})
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "Bearer nope", http.StatusUnauthorized},
		{"right token", "Bearer s3cret", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.d.URL()+daemon.NodesPath, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("GET %s with %q: %d, want %d", daemon.NodesPath, tc.auth, resp.StatusCode, tc.want)
			}
		})
	}
	// Health and metrics stay open for probes and scrapers.
	for _, p := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(e.d.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	if n := metricSum(t, e.d, "refgc_admin_unauthorized_total"); n != 2 {
		t.Fatalf("refgc_admin_unauthorized_total = %v, want 2", n)
	}
}

func TestDeadLettersEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{noStorage: true, noRegistry: true})
	body := `{"events":[{"id":"bad-1","timestamp":"2026-11-22T22:05:20Z","action":"push",` +
		`"target":{"mediaType":"application/octet-stream","digest":"sha256:nothex","size":1,"repository":"../etc"}}]}`
	req, _ := http.NewRequest(http.MethodPost, e.d.WebhookURL(), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v2+json")
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook: %d (a bad event must still get 200)", resp.StatusCode)
	}
	resp, err = http.Get(e.d.URL() + daemon.DeadPath + "?limit=5")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dls []eventlog.StoredDeadLetter
	if err := json.NewDecoder(resp.Body).Decode(&dls); err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].ID != "bad-1" || dls[0].Reason != distribution.ReasonInvalidEvent || !strings.Contains(dls[0].Body, "../etc") {
		t.Fatalf("dead letters: %+v", dls)
	}
	r2, err := http.Get(e.d.URL() + daemon.DeadPath + "?limit=-1")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad limit: %d", r2.StatusCode)
	}
}
