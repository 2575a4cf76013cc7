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
// back is the manifest less its tag.
func TestBodyRoundTrip(t *testing.T) {
	for _, m := range bodyCases() {
		t.Run(m.Digest.Encoded()[:8], func(t *testing.T) {
			in := m
			in.Tag = "v1" // never kept
			k := manifestKey(m.Repo, m.Digest)
			raw := encodeBody(&in)
			got, err := decodeBody(k, raw)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("decoded\n%+v\nwant\n%+v", got, m)
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

// TestBodyReadsJSON reads a body as schema 5 wrote it.
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
		if !got.TagExpires.Equal(m.TagExpires) {
			t.Errorf("tag expiry %s, want %s", got.TagExpires, m.TagExpires)
		}
		got.TagExpires = m.TagExpires
		if !reflect.DeepEqual(got, m) {
			t.Errorf("decoded\n%+v\nwant\n%+v", got, m)
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
