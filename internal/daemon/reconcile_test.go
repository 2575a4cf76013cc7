package daemon_test

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

func adminJSON(t *testing.T, method, url string, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, body)
		}
	}
}

// Pushes the daemon never heard of (a second registry on the same storage,
// without notifications) show as drift; an applying reconcile pass records
// them, after which verify is clean and the collector keeps what is tagged.
func TestReconcileEndpoints(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.reg.PushRandom(t, "app:v1", 2)
	e.reg.PushRandom(t, "app:old", 1)
	e.reg.DeleteTag(t, "app", "old")
	e.settle()

	var drift reconcile.Drift
	adminJSON(t, http.MethodGet, e.d.URL()+daemon.VerifyPath, 200, &drift)
	if !drift.Clean() {
		t.Fatalf("verify after notified pushes: %v %v", drift, drift.Examples)
	}

	dark := regtest.Start(t, regtest.Options{Root: e.reg.Root})
	dark.PushRandom(t, "dark:v1", 2)
	dark.PushRandom(t, "app:v2", 1)
	dark.PushRandom(t, "dark:gone", 1)
	dark.DeleteTag(t, "dark", "gone")

	adminJSON(t, http.MethodGet, e.d.URL()+daemon.VerifyPath, 200, &drift)
	if drift.Clean() || drift.Counts[reconcile.DriftMissingFromProjection] == 0 || drift.Published != 0 {
		t.Fatalf("verify after unnotified pushes: %v", drift)
	}
	adminJSON(t, http.MethodPost, e.d.URL()+daemon.ReconcilePath, 200, &drift)
	if drift.Clean() || drift.Published != 0 {
		t.Fatalf("dry-run reconcile: %v", drift)
	}
	adminJSON(t, http.MethodPost, e.d.URL()+daemon.ReconcilePath+"?apply=maybe", 400, nil)
	adminJSON(t, http.MethodPost, e.d.URL()+daemon.ReconcilePath+"?apply=true", 200, &drift)
	if drift.Published == 0 {
		t.Fatalf("applying reconcile published nothing: %v", drift)
	}
	adminJSON(t, http.MethodGet, e.d.URL()+daemon.VerifyPath, 200, &drift)
	if !drift.Clean() {
		t.Fatalf("verify after reconcile: %v %v", drift, drift.Examples)
	}
	if n := metricSum(t, e.d, "refgc_reconcile_passes_total"); n < 4 {
		t.Errorf("refgc_reconcile_passes_total = %v", n)
	}
	// The last pass's progress stays readable; between passes the ratio is 1.
	if n := metricSum(t, e.d, "refgc_reconcile_progress_objects"); n == 0 {
		t.Error("refgc_reconcile_progress_objects: the last walk counted nothing")
	}
	if r := metricSum(t, e.d, "refgc_reconcile_progress_ratio"); r != 1 {
		t.Errorf("refgc_reconcile_progress_ratio between passes = %v", r)
	}
	var ready struct {
		Status   string                  `json:"status"`
		Follower daemon.FollowerProgress `json:"follower"`
		Pass     *daemon.PassProgress    `json:"pass"`
	}
	adminJSON(t, http.MethodGet, e.d.URL()+"/readyz", 200, &ready)
	if ready.Status != "ok" || ready.Follower.Applied == 0 || ready.Follower.Ratio != 1 || ready.Pass != nil {
		t.Errorf("/readyz: %+v", ready)
	}

	var rb reconcile.RebuildReport
	adminJSON(t, http.MethodPost, e.d.URL()+daemon.RebuildPath+"?out=rebuilt.db", 200, &rb)
	out := rb.Path
	if rb.From != "log" || rb.Differences != 0 || rb.Cursor != rb.LiveCursor || filepath.Base(filepath.Dir(out)) != "rebuilds" {
		t.Fatalf("rebuild: %+v", rb)
	}
	// The rebuilt projection is bound to the stream it was replayed from.
	rebuilt, err := refcount.Open(out, refcount.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got, gerr := rebuilt.StreamID()
	rebuilt.Close()
	if want, err := e.d.Projection().StreamID(); gerr != nil || err != nil || want == "" || got != want {
		t.Errorf("rebuilt projection bound to %q (%v), live one to %q (%v)", got, gerr, want, err)
	}
	adminJSON(t, http.MethodPost, e.d.URL()+daemon.RebuildPath+"?out="+out, 409, nil)
	// Only new files directly in the rebuild directory: no other place, no
	// link (even one into the directory), nothing that exists.
	elsewhere := filepath.Join(t.TempDir(), "x.db")
	if err := os.Symlink(elsewhere, filepath.Join(filepath.Dir(out), "link.db")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		out  string
		code int
	}{
		{elsewhere, 400}, {"../escape.db", 400}, {"sub/x.db", 400}, {"", 400}, {"..", 400},
		{"link.db", 409}, {filepath.Join(filepath.Dir(out), "link.db"), 409},
	} {
		adminJSON(t, http.MethodPost, e.d.URL()+daemon.RebuildPath+"?"+url.Values{"out": {bad.out}}.Encode(), bad.code, nil)
	}
	if _, err := os.Lstat(elsewhere); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a rebuild wrote through a link: %v", err)
	}

	e.collectAndVerify()
	for _, ref := range []string{"app:v1", "app:v2", "dark:v1"} {
		e.mustPull(ref)
	}
}
