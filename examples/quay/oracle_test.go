package quay_test

import (
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// oracle applies the rules of Quay's gc.py directly to the tables, with no
// help from refgc: the _GarbageCollectorContext loop, over every object at
// once, deleting until nothing changes. Tags first (garbage_collect_repo,
// lookup_unrecoverable_tags): a tag row whose lifetime_end is at or before
// now minus its repository's time machine window is garbage; a current
// one, or one still in the window, holds its manifest. _check_manifest_used:
// a tag row points at it. _check_image_used: a manifest names it, or a child image has it
// as parent. _check_label_used: a manifest carries it. Blobs
// (garbage_collect_storage): no manifest, image or derived storage holds
// them. Deleting a manifest deletes its label, blob and legacy-image rows;
// deleting an image deletes its derived storage.
type oracle struct {
	tagRows   map[int64]tagRow
	manifests map[int64]bool // id → exists
	tags      map[int64]int  // manifest id → tag rows that are not garbage
	mBlobs    map[int64][]int64
	mLabels   map[int64][]int64
	mLegacy   map[int64]int64
	labels    map[int64]bool
	images    map[int64]image
	derived   map[int64][]int64 // image → derivative blobs
	blobs     map[int64]blobRow
}

type image struct{ parent, storage int64 }

type tagRow struct {
	manifest int64
	// unrecoverable: lifetime_end + the window is at or before now.
	unrecoverable bool
}

type blobRow struct {
	digest digest.Digest
	data   []byte
}

// rowSet names the rows of each table, for comparisons.
type rowSet map[string]bool

// loadOracle reads the tables as gc.py judges them at now, with window
// the time machine of each repository.
func loadOracle(t testing.TB, db *sql.DB, now time.Time, window func(repo string) time.Duration) *oracle {
	t.Helper()
	o := &oracle{tagRows: map[int64]tagRow{}, manifests: map[int64]bool{}, tags: map[int64]int{}, mBlobs: map[int64][]int64{},
		mLabels: map[int64][]int64{}, mLegacy: map[int64]int64{}, labels: map[int64]bool{},
		images: map[int64]image{}, derived: map[int64][]int64{}, blobs: map[int64]blobRow{}}
	scan := func(q string, fn func(r *sql.Rows) error) {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := fn(rows); err != nil {
				t.Fatal(err)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	var a, b int64
	scan(`SELECT id FROM manifest`, func(r *sql.Rows) error { err := r.Scan(&a); o.manifests[a] = true; return err })
	scan(`SELECT id, repo, manifest_id, lifetime_end FROM tag`, func(r *sql.Rows) error {
		var repo string
		var end sql.NullInt64
		err := r.Scan(&a, &repo, &b, &end)
		row := tagRow{manifest: b, unrecoverable: end.Valid && end.Int64 <= now.UnixMilli()-window(repo).Milliseconds()}
		o.tagRows[a] = row
		if !row.unrecoverable {
			o.tags[b]++
		}
		return err
	})
	scan(`SELECT manifest_id, blob_id FROM manifest_blob`, func(r *sql.Rows) error {
		err := r.Scan(&a, &b)
		o.mBlobs[a] = append(o.mBlobs[a], b)
		return err
	})
	scan(`SELECT manifest_id, label_id FROM manifest_label`, func(r *sql.Rows) error {
		err := r.Scan(&a, &b)
		o.mLabels[a] = append(o.mLabels[a], b)
		return err
	})
	scan(`SELECT manifest_id, image_id FROM manifest_legacy_image`, func(r *sql.Rows) error { err := r.Scan(&a, &b); o.mLegacy[a] = b; return err })
	scan(`SELECT id FROM label`, func(r *sql.Rows) error { err := r.Scan(&a); o.labels[a] = true; return err })
	scan(`SELECT id, COALESCE(parent_id, 0), storage_id FROM image`, func(r *sql.Rows) error {
		var im image
		err := r.Scan(&a, &im.parent, &im.storage)
		o.images[a] = im
		return err
	})
	scan(`SELECT source_image_id, derivative_id FROM derived_storage`, func(r *sql.Rows) error {
		err := r.Scan(&a, &b)
		o.derived[a] = append(o.derived[a], b)
		return err
	})
	scan(`SELECT id, digest, data FROM blob`, func(r *sql.Rows) error {
		var br blobRow
		err := r.Scan(&a, &br.digest, &br.data)
		o.blobs[a] = br
		return err
	})
	return o
}

// garbage runs the loop and returns the rows it deletes, and the rounds it took.
func (o *oracle) garbage() (rowSet, int) {
	gone := rowSet{}
	manifests, images, labels, blobs := clone(o.manifests), map[int64]bool{}, clone(o.labels), map[int64]bool{}
	for id := range o.images {
		images[id] = true
	}
	for id := range o.blobs {
		blobs[id] = true
	}
	rounds := 0
	for id, tr := range o.tagRows {
		if tr.unrecoverable {
			gone[fmt.Sprintf("tag/%d", id)] = true
		}
	}
	for changed := true; changed; {
		changed = false
		rounds++
		for m := range manifests {
			if o.tags[m] == 0 {
				delete(manifests, m)
				gone[fmt.Sprintf("manifest/%d", m)] = true
				changed = true
			}
		}
		// What the manifests and images that remain hold, this round.
		heldImages, heldLabels, heldBlobs := map[int64]bool{}, map[int64]bool{}, map[int64]bool{}
		for m := range manifests {
			if l, ok := o.mLegacy[m]; ok {
				heldImages[l] = true
			}
			for _, l := range o.mLabels[m] {
				heldLabels[l] = true
			}
			for _, b := range o.mBlobs[m] {
				heldBlobs[b] = true
			}
		}
		for i := range images {
			if p := o.images[i].parent; p != 0 {
				heldImages[p] = true
			}
		}
		// Images decided on the holders as the round began: a parent
		// goes in the round after its last child (the seed's loop adds
		// the parent to its context when it deletes the child).
		for i := range images {
			if !heldImages[i] {
				delete(images, i)
				gone[fmt.Sprintf("image/%d", i)] = true
				changed = true
			}
		}
		for l := range labels {
			if !heldLabels[l] {
				delete(labels, l)
				gone[fmt.Sprintf("label/%d", l)] = true
				changed = true
			}
		}
		for i := range images {
			heldBlobs[o.images[i].storage] = true
			for _, b := range o.derived[i] {
				heldBlobs[b] = true
			}
		}
		for b := range blobs {
			if !heldBlobs[b] {
				delete(blobs, b)
				gone[fmt.Sprintf("blob/%d", b)] = true
				changed = true
			}
		}
	}
	return gone, rounds
}

// rows names every row the tables hold.
func (o *oracle) rows() rowSet {
	s := rowSet{}
	for id := range o.tagRows {
		s[fmt.Sprintf("tag/%d", id)] = true
	}
	for m := range o.manifests {
		s[fmt.Sprintf("manifest/%d", m)] = true
	}
	for i := range o.images {
		s[fmt.Sprintf("image/%d", i)] = true
	}
	for l := range o.labels {
		s[fmt.Sprintf("label/%d", l)] = true
	}
	for b := range o.blobs {
		s[fmt.Sprintf("blob/%d", b)] = true
	}
	return s
}

// live is every row minus the garbage.
func (o *oracle) live() rowSet {
	gone, _ := o.garbage()
	s := o.rows()
	for k := range gone {
		delete(s, k)
	}
	return s
}

// checkBlobs verifies that every blob's data still hashes to its digest.
func (o *oracle) checkBlobs(t testing.TB) {
	t.Helper()
	for id, b := range o.blobs {
		if digest.FromBytes(b.data) != b.digest {
			t.Fatalf("blob/%d: data no longer matches %s", id, b.digest)
		}
	}
}

func clone(m map[int64]bool) map[int64]bool {
	c := make(map[int64]bool, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
