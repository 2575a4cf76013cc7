package reconcile

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// A projection replayed under another grace than the live one was built
// with differs from it only in leases and eligibility times: that is no
// difference, and is counted apart.
func TestCompareProjectionsGraceChange(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	layer := digest.FromString("layer")
	recs := []events.Record{
		{Seq: 1, Event: events.Event{V: events.Version, ID: "1", Time: t0, Source: "r", Kind: events.BlobPushed,
			Blob: &events.Blob{Repo: "app", Digest: layer, Size: 10}}},
		{Seq: 2, Event: events.Event{V: events.Version, ID: "2", Time: t0, Source: "r", Kind: events.ManifestPushed,
			Manifest: &events.Manifest{Repo: "app", Digest: digest.FromString("m"), Tag: "v1",
				MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100,
				Blobs: []events.Descriptor{{Digest: layer, Size: 10}}}}},
		{Seq: 3, Event: events.Event{V: events.Version, ID: "3", Time: t0.Add(time.Minute), Source: "r", Kind: events.TagDeleted,
			Tag: &events.Tag{Repo: "app", Name: "v1"}}},
	}
	open := func(grace time.Duration) *refcount.Projection {
		t.Helper()
		p, err := refcount.Open(filepath.Join(t.TempDir(), "p.db"), refcount.Options{Grace: grace, NoSync: true, Now: func() time.Time { return t0 }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		if _, err := p.Apply(recs); err != nil {
			t.Fatal(err)
		}
		return p
	}
	live, same, longer := open(2*time.Minute), open(2*time.Minute), open(time.Hour)
	tests := []struct {
		name              string
		b                 *refcount.Projection
		differ, timingsOf int
	}{
		{"same grace", same, 0, 0},
		{"grace changed", longer, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmp, err := compareProjections(live, tt.b, false, 5)
			if err != nil {
				t.Fatal(err)
			}
			if cmp.Differences != tt.differ || (tt.timingsOf > 0) != (cmp.Timing > 0) {
				t.Fatalf("differences %d, timing %d: %v", cmp.Differences, cmp.Timing, cmp.Examples)
			}
		})
	}
}
