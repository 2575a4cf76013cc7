package collector_test

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// emptyDirs lists the empty directories of a registry's layout (relative
// to it), but its two roots.
func emptyDirs(t *testing.T, root string) []string {
	t.Helper()
	base := filepath.Join(root, filepath.FromSlash(store.Root))
	var out []string
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		rel = filepath.ToSlash(rel)
		if rel == "." || rel == "repositories" || rel == "blobs" {
			return nil
		}
		ents, err := os.ReadDir(p)
		if err == nil && len(ents) == 0 {
			out = append(out, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEmptyDirectoriesGo: images pushed, deleted and collected on the
// filesystem driver leave no empty directory once the grace has passed
// (but the _uploads of the repositories that live, which is the
// registry's), and what lives still pulls.
func TestEmptyDirectoriesGo(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, refcount.PolicyDelete, envOptions{dirs: true, reg: reg})
	e.reg.PushRandom(t, "gone:v1", 2)
	e.reg.PushRandom(t, "gone:v2", 1)
	e.reg.PushRandom(t, "ns/deep/gone:v1", 1)
	e.reg.PushRandom(t, "kept:v1", 2)
	e.reg.PushRandom(t, "kept:v1", 1) // the first image is garbage in a live repository
	e.reg.DeleteTag(t, "gone", "v1")
	e.reg.DeleteTag(t, "gone", "v2")
	e.reg.DeleteTag(t, "ns/deep/gone", "v1")
	e.collectAndVerify()
	// What the last pass emptied is older than the grace at the next one.
	e.advance(2 * testGrace)
	if _, err := e.col.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	live := []string{"repositories/marker/_uploads", "repositories/kept/_uploads"}
	for _, d := range emptyDirs(t, e.reg.Root) {
		if !slices.Contains(live, d) {
			t.Errorf("empty directory left: %s", d)
		}
	}
	for _, gone := range []string{"repositories/gone", "repositories/ns"} {
		if _, err := os.Stat(filepath.Join(e.reg.Root, filepath.FromSlash(store.Root), gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", gone, err)
		}
	}
	if n := regtest.Counter(t, reg, "refgc_collector_empty_dirs_removed_total"); n < 10 {
		t.Errorf("refgc_collector_empty_dirs_removed_total = %v", n)
	}
	e.mustPull("kept:v1")
	e.mustPull("marker:m")
	e.mustNotFind("gone", "v1")
}

// failures counts the 5xx answers a client got (and retried).
type failures struct {
	http.RoundTripper
	n atomic.Int64
}

func (f *failures) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := f.RoundTripper.RoundTrip(r)
	if err == nil && resp.StatusCode >= 500 {
		f.n.Add(1)
	}
	return resp, err
}

// TestEmptyDirectoriesRacingPushes: the worst case of the removal's race
// with the registry's writes. Directories are removed with no grace at
// all (every empty one, however recent, as if each had been empty for
// longer than the grace), in a loop whose rmdir hook yields, while
// clients push into the very repositories being emptied. rmdir never
// removes what a write put there; a write that lands between the
// registry's MkdirAll and its create fails that request, which the client
// retries (here with a fast backoff). Every push the registry
// acknowledged pulls completely afterwards.
func TestEmptyDirectoriesRacingPushes(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t, regtest.Options{})
	st, err := store.New(ctx, "filesystem", map[string]any{"rootdirectory": reg.Root},
		store.WithRmdirHook(func(string) { runtime.Gosched() }))
	if err != nil {
		t.Fatal(err)
	}
	ed := st.EmptyDirs()
	const repos, rounds = 2, 3
	// Leave empty repositories behind, as deletes and a collector would.
	var old []v1.Image
	for i := range repos {
		repo := fmt.Sprintf("race%d", i)
		img := reg.PushRandom(t, repo+":old", 1)
		old = append(old, img)
		reg.DeleteManifest(t, repo, regtest.Digest(t, img))
	}
	stop := make(chan struct{})
	var pruner sync.WaitGroup
	var removed int
	pruner.Go(func() {
		future := time.Now().Add(24 * time.Hour) // no grace: the worst case
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := range repos {
				n, _, err := ed.PruneRepository(ctx, fmt.Sprintf("race%d", i), future)
				if err != nil {
					t.Error(err)
					return
				}
				removed += n
			}
		}
	})
	client := &failures{RoundTripper: http.DefaultTransport.(*http.Transport).Clone()}
	push := func(ref string, img v1.Image) error {
		return remote.Write(reg.Ref(t, ref), img, remote.WithTransport(client),
			remote.WithRetryBackoff(remote.Backoff{Duration: 5 * time.Millisecond, Factor: 2, Steps: 8}))
	}
	var mu sync.Mutex
	var pushed []string
	var pushers sync.WaitGroup
	for i := range repos {
		pushers.Go(func() {
			for r := range rounds {
				img := regtest.RandomImage(t, 2)
				if r == 0 {
					img = old[i] // into the directories the delete left
				}
				ref := fmt.Sprintf("race%d:v%d", i, r)
				if err := push(ref, img); err != nil {
					t.Errorf("push %s: %v", ref, err)
					continue
				}
				mu.Lock()
				pushed = append(pushed, ref)
				mu.Unlock()
			}
		})
	}
	pushers.Wait()
	close(stop)
	pruner.Wait()
	t.Logf("%d directories removed while %d images were pushed; %d requests failed and were retried",
		removed, len(pushed), client.n.Load())
	for _, ref := range pushed {
		reg.MustPull(t, ref)
	}
	if removed == 0 {
		t.Error("no directory removed: no race was run")
	}
}
