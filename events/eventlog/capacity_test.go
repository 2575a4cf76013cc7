package eventlog_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/refcount"
)

var capacityImages = flag.Int("capacity.images", 0, "TestCapacity: images to push (0 skips the measurement)")

// TestCapacity measures what the event log and the projection hold per
// object: it publishes the pushes of -capacity.images images (three
// layers, a manifest and a tag each: 4 events), replays them
// into a projection and reports the stream's and the file's bytes. The
// numbers go into docs/OPERATIONS.md (capacity).
//
//	go test -run TestCapacity -v ./events/eventlog/ -capacity.images=50000
func TestCapacity(t *testing.T) {
	if *capacityImages == 0 {
		t.Skip("a measurement: run with -capacity.images N")
	}
	ctx := context.Background()
	js, _ := jstest.Start(t)
	stream, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := eventlog.NewPublisher(js, eventlog.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC()
	var batch []events.Event
	n := 0
	event := func(e events.Event) {
		n++
		e.V, e.ID, e.Time, e.Source = events.Version, fmt.Sprintf("ev-%d", n), t0, "registry-0"
		batch = append(batch, e)
	}
	for i := range *capacityImages {
		repo := fmt.Sprintf("team%d/app%d", i%100, i%1000)
		var blobs []events.Descriptor
		for l := range 3 {
			d := digest.FromString(fmt.Sprintf("layer-%d-%d", i, l))
			blobs = append(blobs, events.Descriptor{Digest: d, Size: 30 << 20, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"})
			event(events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: d, Size: 30 << 20}})
		}
		event(events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: repo,
			Digest: digest.FromString(fmt.Sprintf("manifest-%d", i)), Tag: fmt.Sprintf("v%d", i),
			MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1200, Blobs: blobs}})
		if len(batch) >= 1000 {
			if _, err := pub.PublishBatch(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if _, err := pub.PublishBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := refcount.Open(path, refcount.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = eventlog.StreamReplay(stream, 0)(ctx, p.BindStream, func(recs []events.Record) error {
		_, err := p.Apply(recs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	nodes := 0
	for _, c := range st.Nodes {
		nodes += c
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	perM := func(total int64, per int) float64 { return float64(total) / float64(per) * 1e6 / (1 << 20) }
	t.Logf("%d images: %d events, %d nodes", *capacityImages, n, nodes)
	t.Logf("stream:     %d bytes, %.0f B/event, %.0f MiB per million events, %.0f MiB per million nodes",
		info.State.Bytes, float64(info.State.Bytes)/float64(n), perM(int64(info.State.Bytes), n), perM(int64(info.State.Bytes), nodes))
	t.Logf("projection: %d bytes, %.0f B/node, %.0f MiB per million nodes", fi.Size(), float64(fi.Size())/float64(nodes),
		perM(fi.Size(), nodes))
}
