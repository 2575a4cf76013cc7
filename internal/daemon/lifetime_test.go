package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// expiringImage is a random image whose config carries quay.expires-after.
func expiringImage(t *testing.T, after string) v1.Image {
	t.Helper()
	img := regtest.RandomImage(t, 2)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.Labels = map[string]string{"quay.expires-after": after}
	img, err = mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func adminPost(t *testing.T, u string, want int, out any) {
	t.Helper()
	resp, err := http.Post(u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("POST %s: %d %s, want %d", u, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTagExpiryAndTimeMachineE2E: a user asks for a tag's expiry with the
// quay.expires-after label; the tag goes when it passes, while its image
// stays pullable by digest for the time machine's window; restore brings
// the tag back; a deleted tag stays restorable for the window, then its
// image goes as garbage. Notifications are duplicated on the way.
func TestTagExpiryAndTimeMachineE2E(t *testing.T) {
	e := newEnv(t, envOpts{expireTags: true, timeMachine: 2 * time.Hour})
	e.reg.Faults.DuplicateFraction(0.3, rand.New(rand.NewPCG(11, 12)))
	short := expiringImage(t, "30m")
	long := expiringImage(t, "1w")
	sd := e.reg.Push(t, "app:short", short)
	e.reg.Push(t, "app:long", long)
	kept := e.reg.PushRandom(t, "app:kept", 1)
	e.settle()
	life, ok, err := e.d.Projection().TagLifeOf(events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "short"})
	if err != nil || !ok || life.Expires.Sub(e.now()) > 30*time.Minute || life.Expires.Sub(e.now()) < 25*time.Minute {
		t.Fatalf("expiry of app:short from its label: %+v %v (now %s)", life, err, e.now())
	}

	e.advance(31 * time.Minute)
	e.settle()
	rep := e.pass()
	if rep.Expired != 1 {
		t.Fatalf("pass: %+v, want one expired tag", rep)
	}
	e.mustNotFind("app", "short")
	e.mustPull("app@" + sd.String()) // in the time machine: the image stays
	e.mustPull("app:long")
	var why refcount.Why
	getJSON(t, e.d.URL()+daemon.WhyPath+"?"+url.Values{"ref": {"app@" + sd.String()}}.Encode(), &why)
	if why.TimeMachine == nil || why.TimeMachine.Reason != refcount.TagExpired {
		t.Fatalf("why: %+v", why)
	}

	// Restored from the time machine, it pulls again (and, its expiry
	// behind it, stays).
	var res collector.Restored
	adminPost(t, e.d.URL()+daemon.RestorePath+"?repo=app&tag=short", http.StatusOK, &res)
	e.mustPull("app:short")
	e.pass()
	e.mustPull("app:short")

	// A deleted tag: restorable within the window, gone after it.
	e.reg.DeleteTag(t, "app", "kept")
	e.settle()
	var im refcount.Impact
	getJSON(t, e.d.URL()+daemon.ImpactPath+"?"+url.Values{"ref": {"app:kept"}}.Encode(), &im)
	if im.RecoverableUntil == nil {
		t.Fatalf("impact of a tag in the time machine: %+v", im)
	}
	e.advance(90 * time.Minute)
	e.pass()
	e.mustPull("app@" + regtest.Digest(t, kept).String())
	e.advance(time.Hour) // past the window
	e.kept = map[string]bool{}
	e.collectAndVerify()
	e.mustNotFind("app", regtest.Digest(t, kept).String())
	e.mustPull("app:short")
	e.mustPull("app:long")
	if code := restoreStatus(t, e, "app", "kept"); code != http.StatusConflict && code != http.StatusNotFound {
		t.Fatalf("restore after the window and the retention: %d", code)
	}
}

func restoreStatus(t *testing.T, e *env, repo, tag string) int {
	t.Helper()
	resp, err := http.Post(e.d.URL()+daemon.RestorePath+"?"+url.Values{"repo": {repo}, "tag": {tag}}.Encode(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getJSON(t *testing.T, u string, out any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

// TestPurgeE2E purges a repository online: its tags go at once (into the
// time machine), its revisions, layer links and unshared data with the
// grace and the retention, and what another repository shares stays. One
// tag is restored within the window, and notifications are held back and
// released in the middle.
func TestPurgeE2E(t *testing.T) {
	e := newEnv(t, envOpts{timeMachine: time.Hour})
	base := e.reg.PushRandom(t, "other:v1", 2)
	shared := regtest.SharingImage(t, base, 1, 1)
	e.reg.Push(t, "app:v1", shared)
	v2 := e.reg.PushRandom(t, "app:v2", 1)
	e.reg.PushByDigest(t, "app", regtest.RandomImage(t, 1)) // untagged
	e.settle()

	var plan daemon.PurgePlan
	adminPost(t, e.d.URL()+daemon.PurgePath+"?repo=app&dry_run=true", http.StatusOK, &plan)
	if len(plan.Tags) != 2 || plan.Event != "" || plan.Usage.Manifests != 3 || plan.TimeMachine != time.Hour {
		t.Fatalf("dry run: %+v", plan)
	}
	e.mustPull("app:v1") // a dry run changes nothing
	e.pass()
	e.mustPull("app:v1")

	e.reg.Faults.Hold() // notifications late across the purge
	adminPost(t, e.d.URL()+daemon.PurgePath+"?repo=app", http.StatusOK, &plan)
	if plan.Event == "" {
		t.Fatalf("purge: %+v", plan)
	}
	e.reg.Faults.Release()
	e.settle()
	rep := e.pass()
	if rep.Expired != 2 {
		t.Fatalf("pass after the purge: %+v", rep)
	}
	e.mustNotFind("app", "v1")
	e.mustNotFind("app", "v2")
	e.mustPull("other:v1")
	adminPost(t, e.d.URL()+daemon.RestorePath+"?repo=app&tag=v2", http.StatusOK, nil)
	e.mustPull("app:v2")

	e.kept = map[string]bool{}
	e.collectAndVerify()
	e.mustPull("other:v1")
	e.mustPull("app:v2")
	e.mustNotFind("app", "v1")
	if d := regtest.Digest(t, v2); d.String() == "" {
		t.Fatal("no digest")
	}
}

// TestDumpAt shows the graph as it was at a sequence and at a time.
func TestDumpAt(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.reg.PushRandom(t, "app:v1", 1)
	e.settle()
	before, err := e.d.Projection().Cursor()
	if err != nil {
		t.Fatal(err)
	}
	mid := e.now()
	e.advance(time.Minute)
	e.reg.DeleteTag(t, "app", "v1")
	e.settle()
	tag := `"node":{"kind":"tag","repo":"app","name":"v1"}`
	dump := func(at string) string {
		t.Helper()
		var b bytes.Buffer
		resp, err := http.Get(e.d.URL() + daemon.DumpPath + "?" + url.Values{"at": {at}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("dump at %s: %d %s", at, resp.StatusCode, b.String())
		}
		if resp.Trailer.Get("Refgc-Cursor") == "" {
			t.Errorf("dump at %s: no cursor trailer", at)
		}
		return b.String()
	}
	for _, at := range []string{strconvU(before), mid.UTC().Format(time.RFC3339Nano)} {
		if got := dump(at); !strings.Contains(got, tag) {
			t.Errorf("dump at %s has no app:v1:\n%s", at, got)
		}
	}
	var now bytes.Buffer
	if err := e.d.Projection().Dump(&now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(now.String(), tag) {
		t.Fatal("the live projection still has the deleted tag")
	}
	resp, err := http.Get(e.d.URL() + daemon.DumpPath + "?at=yesterday")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad point: %d", resp.StatusCode)
	}
	if _, err := e.d.DumpAt(context.Background(), io.Discard, "0"); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("dump at 0: %v", err)
	}
}

func strconvU(v uint64) string { b, _ := json.Marshal(v); return string(b) }
