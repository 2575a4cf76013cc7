package quay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/examples/quay"
)

// TestQuayLifetimes drives tag expiry, the time machine, restores and a
// repository purge through the publisher and a real refgc: every pass is
// checked against gc.py's rules at the test's clock (nothing live goes),
// every drain too (all garbage goes), and the steps in between say which
// rows the time machine keeps.
func TestQuayLifetimes(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	reg, db := h.reg, h.reg.DB()
	push := func(repo, tag string, expires time.Time, content string) digest.Digest {
		t.Helper()
		b := must[digest.Digest](t)(reg.PushBlob(ctx, repo, []byte(content)))
		return must[digest.Digest](t)(reg.PushManifest(ctx, quay.ManifestSpec{Repo: repo, Tag: tag, Expires: expires,
			Blobs: []digest.Digest{b}, Labels: []string{"k=" + content}}))
	}
	manifest := func(repo string, d digest.Digest) bool {
		return exists(t, db, `SELECT 1 FROM manifest WHERE repo = ? AND digest = ?`, repo, d.String())
	}
	tagRows := func(repo, name string) int {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM tag WHERE repo = ? AND name = ?`, repo, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	inTimeMachine := func(repo, name string) bool {
		l, ok, err := h.proj.TagLifeOf(events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return ok && l.InTimeMachine()
	}
	step := func(d time.Duration) collector.Report {
		t.Helper()
		h.advance(d)
		rep := h.pass()
		if rep.Errors > 0 {
			t.Fatalf("pass had %d errors: %+v", rep.Errors, rep)
		}
		return rep
	}

	t.Run("an expired tag holds its manifest for the window, is restored inside it, and goes after it", func(t *testing.T) {
		keep := push("app", "stable", time.Time{}, "stable")
		exp := push("app", "nightly", h.now().Add(30*time.Minute), "nightly")
		step(time.Hour) // expired 30 minutes ago: in the time machine
		if !inTimeMachine("app", "nightly") || tagRows("app", "nightly") != 1 || !manifest("app", exp) {
			t.Fatal("an expired tag left the time machine early, or its manifest went")
		}
		got, err := h.col.RestoreTag(ctx, "app", "nightly")
		if err != nil || got.Manifest.Digest != exp {
			t.Fatalf("restore: %+v %v", got, err)
		}
		if !exists(t, db, `SELECT 1 FROM tag WHERE repo = 'app' AND name = 'nightly' AND lifetime_end IS NULL`) {
			t.Fatal("the owner did not make the tag current again")
		}
		if ni, ok, _ := h.proj.Get(events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "nightly"}); !ok || !ni.Present {
			t.Fatal("refgc does not see the restored tag")
		}
		if err := reg.DeleteTag(ctx, "app", "nightly"); err != nil {
			t.Fatal(err)
		}
		step(time.Hour) // deleted an hour ago: still recoverable
		if tagRows("app", "nightly") != 1 || !manifest("app", exp) {
			t.Fatal("the time machine did not hold the deleted tag's row and manifest")
		}
		before := h.owner.count(owner.StatusDeleted)
		step(90 * time.Minute) // the window ended 30 minutes ago
		if tagRows("app", "nightly") != 0 || inTimeMachine("app", "nightly") {
			t.Fatal("the tag row stayed after its window")
		}
		if h.owner.count(owner.StatusDeleted) == before {
			t.Fatal("the owner was not asked to delete the tag row")
		}
		h.drain()
		if manifest("app", exp) || !manifest("app", keep) {
			t.Fatal("after the drain the expired tag's manifest should be gone and the other stay")
		}
		if _, err := h.col.RestoreTag(ctx, "app", "nightly"); !errors.Is(err, collector.ErrNotInTimeMachine) {
			t.Fatalf("restore after the window: %v", err)
		}
	})

	t.Run("without a window an expired tag's row goes at its expiry", func(t *testing.T) {
		d := push("lib", "rc", h.now().Add(10*time.Minute), "lib-rc")
		step(20 * time.Minute)
		if tagRows("lib", "rc") != 0 || inTimeMachine("lib", "rc") {
			t.Fatal("the expired tag of a repository without a window stayed")
		}
		h.drain()
		if manifest("lib", d) {
			t.Fatal("its manifest stayed")
		}
	})

	t.Run("a purge ends every tag into the window; a restored one stays, the rest goes with unshared blobs", func(t *testing.T) {
		shared := must[digest.Digest](t)(reg.PushBlob(ctx, "team/web", []byte("shared-layer")))
		a := must[digest.Digest](t)(reg.PushManifest(ctx, quay.ManifestSpec{Repo: "team/web", Tag: "a",
			Blobs: []digest.Digest{shared, must[digest.Digest](t)(reg.PushBlob(ctx, "team/web", []byte("only-a")))}}))
		b := push("team/web", "b", h.now().Add(5*time.Hour), "team-b")
		other := must[digest.Digest](t)(reg.PushManifest(ctx, quay.ManifestSpec{Repo: "app", Tag: "uses-shared",
			Blobs: []digest.Digest{shared}}))
		if err := reg.PurgeRepository(ctx, "team/web"); err != nil {
			t.Fatal(err)
		}
		step(time.Hour)
		if !inTimeMachine("team/web", "a") || !inTimeMachine("team/web", "b") || !manifest("team/web", a) || !manifest("team/web", b) {
			t.Fatal("a purged repository's tags must stay recoverable for the window")
		}
		if _, err := h.col.RestoreTag(ctx, "team/web", "b"); err != nil {
			t.Fatal(err)
		}
		step(teamWindow) // the window of a ended
		h.drain()
		switch {
		case manifest("team/web", a) || exists(t, db, `SELECT 1 FROM blob WHERE data = 'only-a'`):
			t.Fatal("the purged, unrestored tag's manifest and blob stayed")
		case !manifest("team/web", b) || !manifest("app", other) || !exists(t, db, `SELECT 1 FROM blob WHERE digest = ?`, shared.String()):
			t.Fatal("the restored tag's manifest, or a blob another repository uses, went")
		}
	})
}
