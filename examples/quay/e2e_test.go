package quay_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/examples/quay"
)

// exists reports whether a query finds a row.
func exists(t *testing.T, db *sql.DB, q string, args ...any) bool {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM ("+q+")", args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestQuayEndToEnd(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	reg, db := h.reg, h.reg.DB()
	blob := func(s string) digest.Digest { return must[digest.Digest](t)(reg.PushBlob(ctx, "app", []byte(s))) }
	label := func(uuid string) bool { return exists(t, db, `SELECT 1 FROM label WHERE uuid = ?`, uuid) }
	img := func(id string) bool { return exists(t, db, `SELECT 1 FROM image WHERE docker_image_id = ?`, id) }
	hasBlob := func(d digest.Digest) bool { return exists(t, db, `SELECT 1 FROM blob WHERE digest = ?`, d.String()) }
	manifest := func(d digest.Digest) bool {
		return exists(t, db, `SELECT 1 FROM manifest WHERE digest = ?`, d.String())
	}

	// A legacy chain img1 ← img2 ← img3, img2 with derived storage; M1 stands for img3.
	st1, st2, st3 := blob("storage-1"), blob("storage-2"), blob("storage-3")
	for _, c := range [][3]string{{"img1", "", string(st1)}, {"img2", "img1", string(st2)}, {"img3", "img2", string(st3)}} {
		if err := reg.CreateLegacyImage(ctx, "app", c[0], c[1], digest.Digest(c[2])); err != nil {
			t.Fatal(err)
		}
	}
	squashed := must[digest.Digest](t)(reg.AddDerivedStorage(ctx, "app", "img2", "squash", []byte("squashed-2")))
	cfg, l1, l2 := blob("config"), blob("layer-1"), blob("layer-2")
	m1 := must[digest.Digest](t)(reg.PushManifest(ctx, quay.ManifestSpec{Repo: "app", Tag: "v1",
		Blobs: []digest.Digest{cfg, l1, l2}, Legacy: "img3", Labels: []string{"a=1"}}))
	lblB := must[string](t)(reg.AttachLabel(ctx, "app", m1, "b=2"))
	orphan := blob("uploaded-never-used")

	h.drain()
	if hasBlob(orphan) || !manifest(m1) || !img("img1") || !hasBlob(squashed) || !label(lblB) {
		t.Fatal("the first drain took the wrong rows")
	}

	t.Run("a detached label goes", func(t *testing.T) {
		if err := reg.DetachLabel(ctx, "app", m1, lblB); err != nil {
			t.Fatal(err)
		}
		h.drain()
		if label(lblB) || !manifest(m1) {
			t.Fatal("label b should be gone and m1 stay")
		}
	})

	// M2 takes the tag; its legacy image img4 is another child of img2.
	st4, l3 := blob("storage-4"), blob("layer-3")
	if err := reg.CreateLegacyImage(ctx, "app", "img4", "img2", st4); err != nil {
		t.Fatal(err)
	}
	m2 := must[digest.Digest](t)(reg.PushManifest(ctx, quay.ManifestSpec{Repo: "app", Tag: "v1",
		Blobs: []digest.Digest{cfg, l3}, Legacy: "img4", Labels: []string{"c=3"}}))
	t.Run("a moved tag releases the old manifest, its labels and its legacy image, not the shared parent", func(t *testing.T) {
		h.drain()
		switch {
		case manifest(m1) || img("img3") || hasBlob(st3) || hasBlob(l1) || hasBlob(l2):
			t.Fatal("m1's rows should be gone")
		case !manifest(m2) || !img("img2") || !img("img1") || !hasBlob(squashed) || !hasBlob(cfg) || !hasBlob(st4):
			t.Fatal("rows m2 holds should stay")
		}
	})

	t.Run("an owner that still uses an object refuses, and its statement holds it again", func(t *testing.T) {
		// The projection hears that label c went (a statement the
		// database contradicts: a registry bug, or a lost attach).
		lblC := ""
		if err := db.QueryRow(`SELECT uuid FROM label WHERE key = 'c'`).Scan(&lblC); err != nil {
			t.Fatal(err)
		}
		wrong := events.Event{V: events.Version, ID: "wrong-detach", Time: h.now(), Source: reg.Source(), Kind: events.LabelDetached,
			Label: &events.Label{Repo: "app", Digest: m2, ID: lblC}}
		if _, err := h.faults.next.PublishBatch(ctx, []events.Event{wrong}); err != nil {
			t.Fatal(err)
		}
		h.drain()
		if !label(lblC) {
			t.Fatal("the owner deleted a label a manifest carries")
		}
		ni, ok, err := h.proj.Get(events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: lblC})
		if err != nil || !ok || ni.Count != 1 {
			t.Fatalf("the correction did not hold the label again: %+v %v %v", ni, ok, err)
		}
	})

	t.Run("an owner that does not answer leaves the intent, and the next pass completes it", func(t *testing.T) {
		lone := blob("lonely")
		if err := h.svc.Stop(); err != nil {
			t.Fatal(err)
		}
		h.advance(testRetention + testGrace)
		rep, err := h.col.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rep.Errors == 0 || !hasBlob(lone) {
			t.Fatalf("without an owner: report %+v, blob there %v", rep, hasBlob(lone))
		}
		if ins, err := h.proj.Intents(); err != nil || len(ins) == 0 {
			t.Fatalf("intents %v %v", ins, err)
		}
		h.serve()
		h.drain()
		if hasBlob(lone) {
			t.Fatal("the blob stayed after the owner came back")
		}
		if ins, err := h.proj.Intents(); err != nil || len(ins) != 0 {
			t.Fatalf("intents left: %v %v", ins, err)
		}
	})

	t.Run("a deleted tag drains the chain one link per pass, derived storage with its image", func(t *testing.T) {
		if err := reg.DeleteTag(ctx, "app", "v1"); err != nil {
			t.Fatal(err)
		}
		_, rounds := h.oracleAt(h.now().Add(testWindow)).garbage() // as gc.py sees it once the window ended
		passes := h.drain()
		for _, x := range []bool{manifest(m2), img("img4"), img("img2"), img("img1"), hasBlob(squashed), hasBlob(cfg), hasBlob(st1)} {
			if x {
				t.Fatal("rows of the deleted tag stayed")
			}
		}
		// m2, then img4, img2 and img1 one link at a time, then the blobs:
		// as in gc.py's loop, a parent goes after its last child.
		if passes < rounds-1 {
			t.Fatalf("%d passes for a loop of %d rounds", passes, rounds)
		}
		for _, table := range []string{"manifest", "manifest_blob", "manifest_label", "label", "image", "manifest_legacy_image", "derived_storage", "blob", "tag"} {
			if exists(t, db, "SELECT 1 FROM "+table) {
				t.Fatalf("table %s still has rows", table)
			}
		}
	})
}

// TestQuayDeletionIsIdempotent sends the same request twice: the second
// answer is the first one, and nothing else is deleted.
func TestQuayDeletionIsIdempotent(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	d := must[digest.Digest](t)(h.reg.PushBlob(ctx, "app", []byte("x")))
	req := quayRequest(h.reg.Source(), "intent-1", events.NodeRef{Kind: events.NodeBlob, Digest: d})
	for i := range 2 {
		resp, err := h.reg.HandleDelete(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Results) != 1 || resp.Results[0].Status != "deleted" {
			t.Fatalf("answer %d: %+v", i, resp)
		}
	}
	resp, err := h.reg.HandleDelete(ctx, quayRequest(h.reg.Source(), "intent-2", events.NodeRef{Kind: events.NodeBlob, Digest: d}))
	if err != nil || resp.Results[0].Status != "absent" {
		t.Fatalf("another intent: %+v %v", resp, err)
	}
}

func quayRequest(source, intent string, n events.NodeRef) owner.Request {
	return owner.Request{V: owner.Version, Source: source, Items: []owner.Item{{Intent: intent, Node: n}}}
}
