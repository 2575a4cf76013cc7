package refcount

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

func bodyCases() []events.Manifest {
	sha512 := digest.SHA512.FromString("big")
	return []events.Manifest{
		{Repo: "r", Digest: dg("bare"), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 7},
		{Repo: "team/app", Digest: dg("img"), MediaType: "application/vnd.docker.distribution.manifest.v2+json", Size: 1234,
			Blobs: []events.Descriptor{
				{MediaType: "application/vnd.docker.container.image.v1+json", Digest: dg("cfg"), Size: 1500},
				{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: dg("l1"), Size: 1 << 40},
				{MediaType: "application/x-made-up", Digest: sha512, Size: 0},
				{Digest: dg("no media type"), Size: 3},
			}},
		{Repo: "r", Digest: dg("index"), MediaType: "application/vnd.oci.image.index.v1+json", Size: 300,
			Children: []events.Descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: dg("c1"), Size: 10}, {Digest: dg("c2"), Size: 11}}},
		{Repo: "r", Digest: dg("sig"), MediaType: "", Size: 0, Unverified: true,
			Subject: &events.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: dg("img"), Size: 1234}},
		{Repo: "r", Digest: dg("old"), MediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws", Size: 5,
			Legacy: "0123abcd", TagExpires: time.Date(2027, 1, 2, 3, 4, 5, 6, time.UTC)},
	}
}

// TestBodyRoundTrip encodes and decodes bodies of every shape: what comes
// back is the manifest less its tag and the tag's expiry.
func TestBodyRoundTrip(t *testing.T) {
	for _, m := range bodyCases() {
		t.Run(m.Digest.Encoded()[:8], func(t *testing.T) {
			in := m
			in.Tag = "v1" // never kept
			if !in.TagExpires.IsZero() {
				in.Tag = "v2"
			}
			k := manifestKey(m.Repo, m.Digest)
			raw := encodeBody(&in)
			got, err := decodeBody(k, raw)
			if err != nil {
				t.Fatal(err)
			}
			want := m
			want.TagExpires = time.Time{} // the push's tag goes, and its expiry with it
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded\n%+v\nwant\n%+v", got, want)
			}
			js, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) >= len(js)/2 {
				t.Errorf("binary body %d bytes, JSON %d", len(raw), len(js))
			}
		})
	}
}

// TestBodyReadsJSON reads a body as schema 5 wrote it (less the tag
// expiry it kept).
func TestBodyReadsJSON(t *testing.T) {
	for _, m := range bodyCases() {
		js, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeBody(manifestKey(m.Repo, m.Digest), js)
		if err != nil {
			t.Fatal(err)
		}
		want := m
		want.TagExpires = time.Time{} // schema 5 kept it; a push without its tag may not
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
		}
	}
}

// TestBodyCorrupt cuts and damages bodies: every one is an error wrapping
// ErrCorrupt or a manifest, never a panic.
func TestBodyCorrupt(t *testing.T) {
	for _, m := range bodyCases() {
		k := manifestKey(m.Repo, m.Digest)
		raw := encodeBody(&m)
		for n := 0; n < len(raw); n++ {
			if _, err := decodeBody(k, raw[:n]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("body cut to %d of %d bytes: %v", n, len(raw), err)
			}
		}
		if _, err := decodeBody(k, append(raw[:len(raw):len(raw)], 0)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("trailing byte: %v", err)
		}
		for i := range raw {
			bad := append([]byte(nil), raw...)
			bad[i] ^= 0xA5
			decodeBody(k, bad) // must not panic
		}
	}
}

// TestTrashBodyRepublishes unlinks a revision pushed by a tag with an
// expiry: the trash entry's manifest, stated again as Restore and the
// reconciler's heal state it, is a valid push.
func TestTrashBodyRepublishes(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour})
	ev := pushM("app", "m", "v1", []string{"l"}, nil, "")
	ev.Manifest.TagExpires = t0.Add(24 * time.Hour)
	f.apply(ev)
	f.apply(delT("app", "v1"))
	f.advance(2 * time.Hour)
	if err := f.collect(manN("app", "m")); err != nil {
		t.Fatal(err)
	}
	entry, ok, err := f.p.TrashEntryOf(manN("app", "m"))
	if err != nil || !ok {
		t.Fatalf("trash entry: %v %v", ok, err)
	}
	m := entry.Manifest
	re := events.Event{V: events.Version, ID: "restore-1", Time: f.now, Kind: events.ManifestPushed, Manifest: &m}
	if err := re.Validate(); err != nil {
		t.Fatalf("the trash entry's manifest is no valid push: %v", err)
	}
}
