package refcount

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// The sequence of events/testdata/distribution-v3.1.2/events, written as
// domain events by hand (the digests are the real ones).
var (
	fxL1 = digest.Digest("sha256:90a0fb77ceecf1d9b55ba1685c51cd320b12383aac98d2aff7882949ac06165e")
	fxC1 = digest.Digest("sha256:3cbf87024f2b5eabe49dadedbc81b1612253a1e353077237723295ca0d5b6848")
	fxM1 = digest.Digest("sha256:c1d30b3156e28b8f1773439d8e9be1b26ba18c441a307ca65f6a24224974d854")
	fxC2 = digest.Digest("sha256:07b24e891a5233c2c2d35ed14eab5ec59b2c2d2ebdcd472e3dec74199dfc6b21")
	fxL2 = digest.Digest("sha256:cc7439ae98340d0ae1376e00071020d380d79e26c098139ecb979122dcf1437a")
	fxM2 = digest.Digest("sha256:ca8180460c8ab0c1da32f55a18af90b7b9dde719b29b828e3e3c5fd4292171bc")
	fxI  = digest.Digest("sha256:d486904221dd7c24d3a8efb1490535cb0a287328b6ecb1977637488036e373d0")
	fxR  = digest.Digest("sha256:8b9ca14af43aff6b5d1e7bd9e20ae51adb8c82e86a1a21ef7cc6a5115cee0c30")
	fxS  = digest.Digest("sha256:0000000000000000000000000000000000000000000000000000000000000001")
)

func fxDesc(d digest.Digest, size int64) events.Descriptor {
	return events.Descriptor{Digest: d, Size: size}
}

func fxManifest(repo string, d digest.Digest, tag string, blobs ...events.Descriptor) events.Event {
	return events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: repo, Digest: d, Tag: tag,
		MediaType: "application/vnd.docker.distribution.manifest.v2+json", Size: 423, Blobs: blobs}}
}

func fxBlob(kind events.Kind, repo string, d digest.Digest, size int64, from string) events.Event {
	return events.Event{Kind: kind, Blob: &events.Blob{Repo: repo, Digest: d, Size: size, From: from}}
}

func fxRef(kind events.Kind, repo string, d digest.Digest) events.Event {
	return events.Event{Kind: kind, Ref: &events.RepoDigest{Repo: repo, Digest: d}}
}

func fixtureSequence() []events.Event {
	c1, l1, c2, l2 := fxDesc(fxC1, 233), fxDesc(fxL1, 138), fxDesc(fxC2, 233), fxDesc(fxL2, 135)
	idx := events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "demo", Digest: fxI, Tag: "idx",
		MediaType: "application/vnd.oci.image.index.v1+json", Size: 541, Children: []events.Descriptor{fxDesc(fxM1, 423), fxDesc(fxM2, 423)}}}
	subj := fxDesc(fxS, 10)
	ref := events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "demo", Digest: fxR,
		MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 604, Blobs: []events.Descriptor{c1, l1}, Subject: &subj}}
	return []events.Event{
		fxBlob(events.BlobPushed, "demo", fxL1, 138, ""), // 001
		fxBlob(events.BlobPushed, "demo", fxC1, 233, ""), // 002
		fxManifest("demo", fxM1, "v1", c1, l1),           // 003
		fxRef(events.Touched, "demo", fxC1),              // 004
		fxRef(events.Touched, "demo", fxL1),              // 005
		fxManifest("demo", fxM1, "v1again", c1, l1),      // 006
		fxRef(events.Touched, "demo", fxL1),              // 007
		fxRef(events.Touched, "demo", fxM1),              // 008
		fxRef(events.Touched, "demo", fxM1),              // 009
		fxBlob(events.BlobMounted, "other", fxC1, 233, "demo"),
		fxBlob(events.BlobMounted, "other", fxL1, 138, "demo"),
		fxManifest("other", fxM1, "v1", c1, l1), // 012
		fxRef(events.Touched, "demo", fxM1),     // 013
		fxBlob(events.BlobMounted, "bydigest", fxL1, 138, "demo"),
		fxBlob(events.BlobMounted, "bydigest", fxC1, 233, "demo"),
		fxManifest("bydigest", fxM1, "", c1, l1), // 016
		fxBlob(events.BlobPushed, "demo", fxC2, 233, ""),
		fxBlob(events.BlobPushed, "demo", fxL2, 135, ""),
		fxManifest("demo", fxM2, "v2", c2, l2), // 019
		fxRef(events.Touched, "demo", fxM1),    // 020–025
		fxRef(events.Touched, "demo", fxC1),
		fxRef(events.Touched, "demo", fxM2),
		fxRef(events.Touched, "demo", fxC2),
		fxRef(events.Touched, "demo", fxM1),
		fxRef(events.Touched, "demo", fxM2),
		idx,                                                                        // 026
		fxRef(events.Touched, "demo", fxI),                                         // 027
		fxRef(events.Touched, "demo", fxM1),                                        // 028
		fxRef(events.Touched, "demo", fxI),                                         // 029
		ref,                                                                        // 030 (subject read from the manifest)
		{Kind: events.TagDeleted, Tag: &events.Tag{Repo: "demo", Name: "v1again"}}, // 031
		fxRef(events.DigestDeleted, "other", fxM1),                                 // 032
		{Kind: events.TagDeleted, Tag: &events.Tag{Repo: "other", Name: "v1"}},     // 033
		fxRef(events.DigestDeleted, "bydigest", fxL1),                              // 034
		fxRef(events.Touched, "demo", fxI),                                         // 035
	}
}

func TestFixtureSequence(t *testing.T) {
	for _, policy := range []Policy{PolicyDelete, PolicyKeep} {
		t.Run(string(policy), func(t *testing.T) {
			f := newFixture(t, Options{Untagged: policy})
			f.apply(fixtureSequence()...)
			mk := func(repo string, d digest.Digest) events.NodeRef {
				return events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}
			}
			lk := func(repo string, d digest.Digest) events.NodeRef {
				return events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: d}
			}
			bk := func(d digest.Digest) events.NodeRef { return events.NodeRef{Kind: events.NodeBlob, Digest: d} }
			want := []struct {
				ref     events.NodeRef
				count   int
				present bool
			}{
				{tagN("demo", "v1"), 0, true},
				{tagN("demo", "v2"), 0, true},
				{tagN("demo", "idx"), 0, true},
				{tagN("demo", "v1again"), -1, false},
				{tagN("other", "v1"), -1, false},
				{mk("demo", fxM1), 2, true}, // v1 and the index
				{mk("demo", fxM2), 2, true}, // v2 and the index
				{mk("demo", fxI), 1, true},
				{mk("demo", fxR), 0, true}, // its subject was never pushed
				{mk("demo", fxS), -1, false},
				{mk("other", fxM1), -1, false},
				{mk("bydigest", fxM1), 0, true},
				{lk("demo", fxC1), 2, true}, // M1 and the referrer
				{lk("demo", fxL1), 2, true},
				{lk("demo", fxC2), 1, true},
				{lk("demo", fxL2), 1, true},
				{lk("other", fxC1), 0, true},
				{lk("other", fxL1), 0, true},
				{lk("bydigest", fxC1), 1, true},
				{lk("bydigest", fxL1), 1, false}, // unlinked by the API, still held by the manifest
				{bk(fxL1), 3, true},
				{bk(fxC1), 3, true},
				{bk(fxC2), 1, true},
				{bk(fxL2), 1, true},
				{bk(fxM1), 2, true},
				{bk(fxM2), 1, true},
				{bk(fxI), 1, true},
				{bk(fxR), 1, true},
			}
			for _, w := range want {
				f.expect(w.ref, w.count, w.present)
			}
			later := t0.Add(48 * hour)
			if policy == PolicyKeep {
				f.expectCandidates(later, lk("other", fxC1), lk("other", fxL1))
			} else {
				f.expectCandidates(later, lk("other", fxC1), lk("other", fxL1), mk("demo", fxR), mk("bydigest", fxM1))
				f.now = later
				if err := f.collect(mk("bydigest", fxM1)); err != nil {
					t.Fatal(err)
				}
				f.expect(lk("bydigest", fxL1), -1, false)
				f.expect(lk("bydigest", fxC1), 0, true)
				f.expect(bk(fxL1), 2, true)
			}
			f.check()
		})
	}
}
