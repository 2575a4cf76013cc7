package regtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func keys(repo string, ds ...v1.Hash) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		if repo == "" {
			out = append(out, d.String())
		} else {
			out = append(out, repo+"@"+d.String())
		}
	}
	return out
}

func wantIn(t *testing.T, what string, s Set, ks ...string) {
	t.Helper()
	for _, k := range ks {
		if !s.Has(k) {
			t.Errorf("%s: missing %s (have %v)", what, k, s.Sorted())
		}
	}
}

func wantOut(t *testing.T, what string, s Set, ks ...string) {
	t.Helper()
	for _, k := range ks {
		if s.Has(k) {
			t.Errorf("%s: unexpected %s", what, k)
		}
	}
}

// TestOracle pushes images, an index, a referrer, a mount and deletes, and
// checks the oracle's sets against what was done.
func TestOracle(t *testing.T) {
	r := Start(t, Options{})

	base := r.PushRandom(t, "app:v1", 2)
	r.Pull(t, "app:v1")
	shared := SharingImage(t, base, 1, 1)
	r.Push(t, "app:v2", shared)
	untagged := RandomImage(t, 1)
	r.PushByDigest(t, "app", untagged)
	c1, c2 := OCI(RandomImage(t, 1)), RandomImage(t, 1)
	idx := r.PushIndex(t, "multi/arch", "idx", c1, c2)
	r.Pull(t, "multi/arch:idx")
	art := r.PushReferrer(t, "app", Describe(t, base), "application/vnd.example.sbom")
	r.Mount(t, "app:v1", "other/copy:v1")
	r.Pull(t, "other/copy:v1")

	// Garbage: a tag deleted, a blob unlinked, an untagged manifest whose
	// referrer-less image stays only under keepUntagged.
	gone := r.PushRandom(t, "app:gone", 1)
	r.DeleteTag(t, "app", "gone")
	if got := r.ManifestStatus(t, "app", "gone"); got != http.StatusNotFound {
		t.Fatalf("deleted tag: status %d", got)
	}
	if err := r.TryPull(t, "app:gone"); err == nil {
		t.Fatal("pull of a deleted tag succeeded")
	}

	present, err := Present(r.Root)
	if err != nil {
		t.Fatal(err)
	}
	wantIn(t, "present tags", present.Tags, "app:v1", "app:v2", "multi/arch:idx", "other/copy:v1")
	wantOut(t, "present tags", present.Tags, "app:gone")
	wantIn(t, "present revisions", present.Revisions,
		keys("app", Digest(t, base), Digest(t, shared), Digest(t, untagged), art.Digest, Digest(t, gone))...)

	tagged, err := Reachable(r.Root, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(tagged.Dangling) > 0 {
		t.Errorf("dangling: %v", tagged.Dangling)
	}
	wantIn(t, "reachable tags", tagged.Tags, "app:v1", "app:v2", "multi/arch:idx", "other/copy:v1")
	wantIn(t, "reachable revisions", tagged.Revisions,
		append(keys("app", Digest(t, base), Digest(t, shared), art.Digest),
			keys("multi/arch", Digest(t, idx), Digest(t, c1), Digest(t, c2))...)...)
	wantIn(t, "reachable revisions", tagged.Revisions, keys("other/copy", Digest(t, base))...)
	wantOut(t, "reachable revisions", tagged.Revisions, keys("app", Digest(t, untagged), Digest(t, gone))...)
	// The referrer keeps its blobs; the mount's layers are linked in both repos.
	wantIn(t, "reachable layers", tagged.Layers, keys("app", art.Config, art.Layer)...)
	wantIn(t, "reachable layers", tagged.Layers, keys("app", BlobDigests(t, base)...)...)
	wantIn(t, "reachable layers", tagged.Layers, keys("other/copy", BlobDigests(t, base)...)...)
	wantIn(t, "reachable blobs", tagged.Blobs, keys("", BlobDigests(t, c1)...)...)
	wantOut(t, "reachable layers", tagged.Layers, keys("app", BlobDigests(t, untagged)...)...)
	wantOut(t, "reachable blobs", tagged.Blobs, keys("", Digest(t, gone), Digest(t, untagged))...)
	if extra := tagged.Minus(present); len(extra) > 0 {
		t.Errorf("reachable but not present: %v", extra)
	}
	garbage := present.Minus(tagged)
	if len(garbage) == 0 {
		t.Error("no garbage found after a tag delete and an untagged push")
	}

	keep, err := Reachable(r.Root, true)
	if err != nil {
		t.Fatal(err)
	}
	wantIn(t, "keep-untagged revisions", keep.Revisions, keys("app", Digest(t, untagged), Digest(t, gone))...)
	wantIn(t, "keep-untagged blobs", keep.Blobs, keys("", BlobDigests(t, untagged)...)...)

	// A referrer of an unreachable subject is unreachable.
	r.PushReferrer(t, "app", Describe(t, untagged), "application/vnd.example.sig")
	sig, err := Reachable(r.Root, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sig.Revisions.Len(), len(tagged.Revisions); got != want {
		t.Errorf("a referrer of an untagged manifest became reachable: %d revisions, want %d", got, want)
	}

	// Unlinking through the API: a manifest delete, a blob delete.
	r.DeleteManifest(t, "app", Digest(t, shared))
	r.DeleteBlob(t, "other/copy", BlobDigests(t, base)[1])
	after, err := Reachable(r.Root, false)
	if err != nil {
		t.Fatal(err)
	}
	wantOut(t, "after delete tags", after.Tags, "app:v2")
	wantOut(t, "after delete revisions", after.Revisions, keys("app", Digest(t, shared))...)
	if !slices.Contains(after.Dangling, "revision other/copy@"+Digest(t, base).String()+" -> layer other/copy@"+BlobDigests(t, base)[1].String()) {
		t.Errorf("unlinked layer not reported dangling: %v", after.Dangling)
	}
}

// TestNotify checks that notifications reach the endpoint with the token.
func TestNotify(t *testing.T) {
	var mu sync.Mutex
	var got []string
	var auth []string
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		var env struct {
			Events []struct {
				Action string `json:"action"`
				Target struct {
					Repository string `json:"repository"`
					Tag        string `json:"tag"`
				} `json:"target"`
			} `json:"events"`
		}
		_ = json.Unmarshal(b, &env)
		mu.Lock()
		for _, e := range env.Events {
			got = append(got, e.Action+" "+e.Target.Repository+":"+e.Target.Tag)
		}
		auth = append(auth, req.Header.Get("Authorization"))
		mu.Unlock()
	}))
	t.Cleanup(sink.Close)

	r := Start(t, Options{NotifyURL: sink.URL, NotifyToken: "s3cret"})
	r.PushRandom(t, "app:v1", 1)

	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		done := slices.Contains(got, "push app:v1")
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no manifest push event; got %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range auth {
		if a != "Bearer s3cret" {
			t.Errorf("authorization header %q", a)
		}
	}
}

// TestStartFromConfigFile runs a registry from a deployment-style file:
// storage moves under the test's root, notifications go to the test.
func TestStartFromConfigFile(t *testing.T) {
	var mu sync.Mutex
	var hdr []string
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		hdr = append(hdr, req.Header.Get("X-Test")+" "+req.Header.Get("Authorization"))
		mu.Unlock()
	}))
	t.Cleanup(sink.Close)

	cfg := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(cfg, []byte(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /nonexistent/registry
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:5055
  secret: testsecret
notifications:
  events:
    includereferences: true
  endpoints:
    - name: gc
      url: http://127.0.0.1:1/events
      headers:
        X-Test: [hello]
      timeout: 2s
      threshold: 3
      backoff: 1s
`), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	r := StartFromConfigFile(t, cfg, Options{Root: root, NotifyURL: sink.URL, NotifyToken: "tok"})
	img := r.PushRandom(t, "app:v1", 1)
	r.DeleteManifest(t, "app", Digest(t, img)) // delete must be enabled, as the file says
	p, err := Present(root)
	if err != nil {
		t.Fatal(err)
	}
	if p.Blobs.Len() == 0 {
		t.Fatal("nothing stored under the test's root")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(hdr)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no notification reached the test")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if hdr[0] != "hello Bearer tok" {
		t.Errorf("headers %q", hdr[0])
	}
}
