package distribution

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/notifications"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/internal/fixtures"
	"github.com/refgc/refgc/events/schema"
)

// Digests of the fixture capture.
var (
	fxConfig1 = fixtures.FixA // config of demo:v1
	fxLayer1  = fixtures.FixB // layer of demo:v1
	fxV1      = digest.Digest("sha256:c1d30b3156e28b8f1773439d8e9be1b26ba18c441a307ca65f6a24224974d854")
	fxConfig2 = digest.Digest("sha256:07b24e891a5233c2c2d35ed14eab5ec59b2c2d2ebdcd472e3dec74199dfc6b21")
	fxLayer2  = digest.Digest("sha256:cc7439ae98340d0ae1376e00071020d380d79e26c098139ecb979122dcf1437a")
	fxV2      = digest.Digest("sha256:ca8180460c8ab0c1da32f55a18af90b7b9dde719b29b828e3e3c5fd4292171bc")
	fxIndex   = digest.Digest("sha256:d486904221dd7c24d3a8efb1490535cb0a287328b6ecb1977637488036e373d0")
	fxSigned  = digest.Digest("sha256:8b9ca14af43aff6b5d1e7bd9e20ae51adb8c82e86a1a21ef7cc6a5115cee0c30")
)

const (
	fxSource  = "distribution:01a2054a-af1d-70eb-95e7-a20868dc24b1"
	dockerCfg = "application/vnd.docker.container.image.v1+json"
	dockerLyr = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

var (
	fxBlobs1 = []events.Descriptor{{MediaType: dockerCfg, Digest: fxConfig1, Size: 233}, {MediaType: dockerLyr, Digest: fxLayer1, Size: 138}}
	fxBlobs2 = []events.Descriptor{{MediaType: dockerCfg, Digest: fxConfig2, Size: 233}, {MediaType: dockerLyr, Digest: fxLayer2, Size: 135}}
)

// mapReader is a ManifestReader over fixed bodies, served without a media
// type (so ParseManifest detects it); it counts its reads.
type mapReader struct {
	bodies map[digest.Digest][]byte
	err    error
	reads  atomic.Int64
}

func (m *mapReader) ReadManifest(_ context.Context, repo string, d digest.Digest) ([]byte, string, error) {
	m.reads.Add(1)
	if m.err != nil {
		return nil, "", m.err
	}
	b, ok := m.bodies[d]
	if !ok {
		return nil, "", fmt.Errorf("%w: %s@%s", ErrManifestNotFound, repo, d)
	}
	return b, "", nil
}

func fixtureReader(t testing.TB) *mapReader {
	return &mapReader{bodies: map[digest.Digest][]byte{fxSigned: fixtures.Read(t, "manifests/oci-with-subject.json")}}
}

// fixtureFiles lists every captured notification, in delivery order.
func fixtureFiles(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"events", "redelivery"} {
		m, err := filepath.Glob(filepath.Join(fixtures.Dir, dir, "*.json"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			out = append(out, dir+"/"+filepath.Base(f))
		}
	}
	if len(out) != 39 {
		t.Fatalf("found %d fixture files, want 39", len(out))
	}
	return out
}

// want is the expected translation of one fixture file.
type want struct {
	kind     events.Kind
	repo     string
	digest   digest.Digest
	tag      string
	from     string
	size     int64
	blobs    []events.Descriptor
	children []events.Descriptor
	subject  *events.Descriptor
	enrich   bool // EnrichErr expected (the reader does not hold the manifest)
	dropped  bool
}

var fixtureWants = map[string]want{
	"events/001.json":     {kind: events.BlobPushed, repo: "demo", digest: fxLayer1, size: 138},
	"events/002.json":     {kind: events.BlobPushed, repo: "demo", digest: fxConfig1, size: 233},
	"events/003.json":     {kind: events.ManifestPushed, repo: "demo", digest: fxV1, tag: "v1", size: 423, blobs: fxBlobs1},
	"events/004.json":     {kind: events.Touched, repo: "demo", digest: fxConfig1},
	"events/005.json":     {kind: events.Touched, repo: "demo", digest: fxLayer1},
	"events/006.json":     {kind: events.ManifestPushed, repo: "demo", digest: fxV1, tag: "v1again", size: 423, blobs: fxBlobs1},
	"events/007.json":     {kind: events.Touched, repo: "demo", digest: fxLayer1},
	"events/008.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/009.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/010.json":     {kind: events.BlobMounted, repo: "other", digest: fxConfig1, from: "demo", size: 233},
	"events/011.json":     {kind: events.BlobMounted, repo: "other", digest: fxLayer1, from: "demo", size: 138},
	"events/012.json":     {kind: events.ManifestPushed, repo: "other", digest: fxV1, tag: "v1", size: 423, blobs: fxBlobs1},
	"events/013.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/014.json":     {kind: events.BlobMounted, repo: "bydigest", digest: fxLayer1, from: "demo", size: 138},
	"events/015.json":     {kind: events.BlobMounted, repo: "bydigest", digest: fxConfig1, from: "demo", size: 233},
	"events/016.json":     {kind: events.ManifestPushed, repo: "bydigest", digest: fxV1, size: 423, blobs: fxBlobs1},
	"events/017.json":     {kind: events.BlobPushed, repo: "demo", digest: fxConfig2, size: 233},
	"events/018.json":     {kind: events.BlobPushed, repo: "demo", digest: fxLayer2, size: 135},
	"events/019.json":     {kind: events.ManifestPushed, repo: "demo", digest: fxV2, tag: "v2", size: 423, blobs: fxBlobs2},
	"events/020.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/021.json":     {kind: events.Touched, repo: "demo", digest: fxConfig1},
	"events/022.json":     {kind: events.Touched, repo: "demo", digest: fxV2},
	"events/023.json":     {kind: events.Touched, repo: "demo", digest: fxConfig2},
	"events/024.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/025.json":     {kind: events.Touched, repo: "demo", digest: fxV2},
	"events/026.json":     {kind: events.ManifestPushed, repo: "demo", digest: fxIndex, tag: "idx", size: 541, enrich: true, children: []events.Descriptor{{MediaType: events.MediaTypeDockerManifest, Digest: fxV1, Size: 423}, {MediaType: events.MediaTypeDockerManifest, Digest: fxV2, Size: 423}}},
	"events/027.json":     {kind: events.Touched, repo: "demo", digest: fxIndex},
	"events/028.json":     {kind: events.Touched, repo: "demo", digest: fxV1},
	"events/029.json":     {kind: events.Touched, repo: "demo", digest: fxIndex},
	"events/030.json":     {kind: events.ManifestPushed, repo: "demo", digest: fxSigned, size: 604, blobs: []events.Descriptor{{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fxConfig1, Size: 233}, {MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: fxLayer1, Size: 138}}, subject: &events.Descriptor{MediaType: events.MediaTypeOCIManifest, Digest: fixtures.FixS, Size: 10}},
	"events/031.json":     {kind: events.TagDeleted, repo: "demo", tag: "v1again"},
	"events/032.json":     {kind: events.DigestDeleted, repo: "other", digest: fxV1},
	"events/033.json":     {kind: events.TagDeleted, repo: "other", tag: "v1"},
	"events/034.json":     {kind: events.DigestDeleted, repo: "bydigest", digest: fxLayer1},
	"events/035.json":     {kind: events.Touched, repo: "demo", digest: fxIndex},
	"redelivery/001.json": {kind: events.TagDeleted, repo: "demo", tag: "v1"},
	"redelivery/002.json": {kind: events.DigestDeleted, repo: "demo", digest: fxV2},
	"redelivery/003.json": {kind: events.Touched, repo: "bydigest", digest: fxV1},
	"redelivery/004.json": {kind: events.Touched, repo: "demo", digest: fxIndex},
}

// summary flattens an event into the fields of want.
func summary(e events.Event) want {
	var w want
	w.kind = e.Kind
	switch {
	case e.Manifest != nil:
		m := e.Manifest
		w.repo, w.digest, w.tag, w.size, w.blobs, w.children, w.subject = m.Repo, m.Digest, m.Tag, m.Size, m.Blobs, m.Children, m.Subject
	case e.Blob != nil:
		w.repo, w.digest, w.size, w.from = e.Blob.Repo, e.Blob.Digest, e.Blob.Size, e.Blob.From
	case e.Ref != nil:
		w.repo, w.digest = e.Ref.Repo, e.Ref.Digest
	case e.Tag != nil:
		w.repo, w.tag, w.digest = e.Tag.Repo, e.Tag.Name, e.Tag.Digest
	}
	return w
}

func TestTranslateFixtures(t *testing.T) {
	ctx := context.Background()
	reader := fixtureReader(t)
	for _, name := range fixtureFiles(t) {
		t.Run(name, func(t *testing.T) {
			wantSum, ok := fixtureWants[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			raw := fixtures.Read(t, name)
			var env struct {
				Events []DistributionEvent `json:"events"`
			}
			if err := json.Unmarshal(raw, &env); err != nil {
				t.Fatal(err)
			}
			res := Translate(ctx, raw, TranslateOptions{Reader: reader})
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			r := res[0]
			if r.DeadLettered() {
				t.Fatalf("dead-lettered: %s: %v", r.Reason, r.Err)
			}
			if (r.EnrichErr != nil) != wantSum.enrich {
				t.Fatalf("EnrichErr = %v, want error: %v", r.EnrichErr, wantSum.enrich)
			}
			if wantSum.enrich && !errors.Is(r.EnrichErr, ErrManifestNotFound) {
				t.Errorf("EnrichErr = %v, want ErrManifestNotFound", r.EnrichErr)
			}
			if len(r.Events) != 1 {
				t.Fatalf("%d events, want 1", len(r.Events))
			}
			ev := r.Events[0]
			de := env.Events[0]
			if ev.ID != de.ID || r.ID != de.ID || !ev.Time.Equal(de.Timestamp) || ev.V != events.Version ||
				ev.Source != "distribution:"+de.Source.InstanceID || ev.Host != de.Source.Addr || ev.Host == "" ||
				!ev.Received.IsZero() {
				t.Errorf("envelope fields: %+v (registry event %s at %s from %s)", ev, de.ID, de.Timestamp, de.Source.InstanceID)
			}
			if r.Action != de.Action || r.Index != 0 || !json.Valid(r.Raw) {
				t.Errorf("result fields: action %q index %d", r.Action, r.Index)
			}
			got := summary(ev)
			wantSum.enrich = false
			if !reflect.DeepEqual(got, wantSum) {
				t.Errorf("got  %+v\nwant %+v", got, wantSum)
			}
			if err := ev.Validate(); err != nil {
				t.Error(err)
			}
			// Through the wire encoding and back, unchanged.
			b, err := events.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			back, err := events.Decode(b)
			if err != nil || !reflect.DeepEqual(back.Manifest, ev.Manifest) || back.ID != ev.ID {
				t.Errorf("encode/decode changed the event: %v", err)
			}
			// A real event, as the log stores it, obeys the published schema.
			ev.Received = ev.Time
			if b, err = events.Encode(ev); err != nil {
				t.Fatal(err)
			}
			if err := schema.Validate(events.Version, b); err != nil {
				t.Errorf("the published schema refuses %s: %v", b, err)
			}
		})
	}
	if n := reader.reads.Load(); n != 2 {
		t.Errorf("reader read %d manifests, want 2 (the OCI pushes 026 and 030 only)", n)
	}
}

// TestTranslateFixturesExact pins the whole domain event for a few fixtures.
func TestTranslateFixturesExact(t *testing.T) {
	ts := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	tests := map[string]events.Event{
		"events/001.json": {V: 1, ID: "01a2054a-d834-7ea3-946d-36a5d494a272", Time: ts("2026-11-22T22:05:20.820960181Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.BlobPushed, Blob: &events.Blob{Repo: "demo", Digest: fxLayer1, Size: 138}},
		"events/003.json": {V: 1, ID: "01a2054a-d83b-761f-a76b-cd6ad782b15f", Time: ts("2026-11-22T22:05:20.827401909Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "demo", Digest: fxV1,
				MediaType: events.MediaTypeDockerManifest, Size: 423, Blobs: fxBlobs1, Tag: "v1"}},
		"events/010.json": {V: 1, ID: "01a2054b-17e8-7843-a4b2-d33f2571a795", Time: ts("2026-11-22T22:05:37.12854304Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.BlobMounted, Blob: &events.Blob{Repo: "other", Digest: fxConfig1, Size: 233, From: "demo"}},
		"events/026.json": {V: 1, ID: "01a2054b-3014-79f9-9ed6-a1d9eca805eb", Time: ts("2026-11-22T22:05:43.316653969Z"), Source: fxSource, Host: "vm:5055", Kind: events.ManifestPushed,
			Manifest: &events.Manifest{Repo: "demo", Digest: fxIndex, MediaType: events.MediaTypeOCIIndex, Size: 541, Tag: "idx", Unverified: true,
				Children: []events.Descriptor{{MediaType: events.MediaTypeDockerManifest, Digest: fxV1, Size: 423}, {MediaType: events.MediaTypeDockerManifest, Digest: fxV2, Size: 423}}}},
		"events/030.json": {V: 1, ID: "01a2054b-58ad-77fa-87f7-fe6c410b0755", Time: ts("2026-11-22T22:05:53.709523445Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "demo", Digest: fxSigned,
				MediaType: events.MediaTypeOCIManifest, Size: 604,
				Blobs: []events.Descriptor{
					{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fxConfig1, Size: 233},
					{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: fxLayer1, Size: 138},
				},
				Subject: &events.Descriptor{MediaType: events.MediaTypeOCIManifest, Digest: fixtures.FixS, Size: 10}}},
		"events/031.json": {V: 1, ID: "01a2054b-7621-7897-a652-01e6bb8120ec", Time: ts("2026-11-22T22:06:01.249563587Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.TagDeleted, Tag: &events.Tag{Repo: "demo", Name: "v1again"}},
		"events/034.json": {V: 1, ID: "01a2054b-763d-72ab-8e90-04e7b4908a42", Time: ts("2026-11-22T22:06:01.277175407Z"),
			Source: fxSource, Host: "vm:5055", Kind: events.DigestDeleted, Ref: &events.RepoDigest{Repo: "bydigest", Digest: fxLayer1}},
		"events/035.json": {V: 1, ID: "01a2054b-efc7-7b28-ba5c-f2acc7233fc6", Time: ts("2026-11-22T22:06:32.391731496Z"),
			Source: "distribution:01a2054b-e7d8-71fd-ac94-ccdeba62951c", Host: "vm:5055", Kind: events.Touched, Ref: &events.RepoDigest{Repo: "demo", Digest: fxIndex}},
	}
	reader := fixtureReader(t)
	for name, wantEv := range tests {
		t.Run(name, func(t *testing.T) {
			raw := fixtures.Read(t, name)
			res := Translate(context.Background(), raw, TranslateOptions{Reader: reader})
			if len(res) != 1 || len(res[0].Events) != 1 {
				t.Fatalf("results %+v", res)
			}
			got := res[0].Events[0]
			if !reflect.DeepEqual(got, wantEv) {
				gb, _ := json.Marshal(got)
				wb, _ := json.Marshal(wantEv)
				t.Errorf("got  %s\nwant %s", gb, wb)
			}
		})
	}
}

// TestMirrorMatchesDistribution checks that the mirrored wire types decode
// every capture exactly as Distribution's own notifications.Event does.
func TestMirrorMatchesDistribution(t *testing.T) {
	for _, name := range fixtureFiles(t) {
		raw := fixtures.Read(t, name)
		var theirs struct {
			Events []notifications.Event `json:"events"`
		}
		var ours struct {
			Events []DistributionEvent `json:"events"`
		}
		if err := json.Unmarshal(raw, &theirs); err != nil {
			t.Fatalf("%s: notifications.Event: %v", name, err)
		}
		if err := json.Unmarshal(raw, &ours); err != nil {
			t.Fatalf("%s: DistributionEvent: %v", name, err)
		}
		a, _ := json.Marshal(theirs)
		b, _ := json.Marshal(ours)
		if string(a) != string(b) {
			t.Errorf("%s: decodings differ:\n%s\n%s", name, a, b)
		}
	}
}

// envelope wraps raw events into a notification body.
func envelope(evs ...string) []byte {
	return []byte(`{"events":[` + strings.Join(evs, ",") + `]}`)
}

// rawEvent builds one registry event as JSON.
func rawEvent(id, action, repo string, target map[string]any) string {
	t := map[string]any{"repository": repo}
	for k, v := range target {
		t[k] = v
	}
	b, err := json.Marshal(map[string]any{
		"id": id, "timestamp": "2026-11-22T22:05:20.820960181Z", "action": action,
		"target": t, "request": map[string]any{"method": "PUT"},
		"source": map[string]any{"addr": "reg:5000"},
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func blobTarget(d digest.Digest) map[string]any {
	return map[string]any{"mediaType": "application/octet-stream", "digest": d, "size": 3}
}

func TestTranslateDeadLetters(t *testing.T) {
	good := rawEvent("good-1", "push", "demo", blobTarget(fixtures.L1))
	tests := []struct {
		name      string
		event     string
		reason    string // "" when it translates
		dropped   bool
		wantField string // part of the error text
	}{
		{name: "good", event: good},
		{name: "not an object", event: `"hello"`, reason: ReasonMalformedJSON},
		{name: "wrong field type", event: `{"id":"x","action":"push","target":{"size":"big"}}`, reason: ReasonMalformedJSON},
		{name: "bad timestamp", event: `{"id":"x","action":"push","timestamp":"yesterday"}`, reason: ReasonMalformedJSON},
		{name: "bad digest", event: rawEvent("e1", "push", "demo", blobTarget(digest.Digest(fixtures.BadDigest))), reason: ReasonInvalidEvent, wantField: "blob.digest"},
		{name: "dotdot repo", event: rawEvent("e2", "push", "demo/../etc", blobTarget(fixtures.L1)), reason: ReasonInvalidEvent, wantField: "blob.repo"},
		{name: "upper-case repo", event: rawEvent("e3", "mount", "Demo", blobTarget(fixtures.L1)), reason: ReasonInvalidEvent, wantField: "blob.repo"},
		{name: "bad mount source", event: rawEvent("e4", "mount", "demo", map[string]any{"digest": fixtures.L1, "fromRepository": "../x"}), reason: ReasonInvalidEvent, wantField: "blob.from"},
		{name: "unknown action", event: rawEvent("e5", "frobnicate", "demo", blobTarget(fixtures.L1)), reason: ReasonUnknownAction},
		{name: "missing action", event: `{"id":"e6","target":{"repository":"demo"}}`, reason: ReasonUnknownAction},
		{name: "push of neither blob nor manifest", event: rawEvent("e7", "push", "demo", map[string]any{"mediaType": "text/html", "digest": fixtures.L1}), reason: ReasonInvalidEvent},
		{name: "manifest push with bad digest", event: rawEvent("e8", "push", "demo", map[string]any{"mediaType": events.MediaTypeOCIManifest, "digest": "sha256:abc"}), reason: ReasonInvalidEvent, wantField: "target.digest"},
		{name: "manifest push with bad tag", event: rawEvent("e9", "push", "demo", map[string]any{"mediaType": events.MediaTypeDockerManifest, "digest": fixtures.M1, "tag": "-bad tag", "references": []any{map[string]any{"digest": fixtures.L1, "size": 1}}}), reason: ReasonInvalidEvent, wantField: "manifest.tag"},
		{name: "manifest push with bad reference", event: rawEvent("e10", "push", "demo", map[string]any{"mediaType": events.MediaTypeDockerManifest, "digest": fixtures.M1, "references": []any{map[string]any{"digest": "nope", "size": 1}}}), reason: ReasonInvalidEvent, wantField: "manifest.blobs[0].digest"},
		{name: "delete of nothing", event: rawEvent("e11", "delete", "demo", nil), reason: ReasonInvalidEvent},
		{name: "delete with bad tag", event: rawEvent("e12", "delete", "demo", map[string]any{"tag": "a/b"}), reason: ReasonInvalidEvent, wantField: "tag.name"},
		{name: "id with spaces", event: rawEvent("has space", "push", "demo", blobTarget(fixtures.L1)), reason: ReasonInvalidEvent, wantField: "id"},
		{name: "pull without digest", event: rawEvent("e13", "pull", "demo", map[string]any{"mediaType": events.MediaTypeDockerManifest, "tag": "v1"}), dropped: true},
	}
	var all []string
	for _, tt := range tests {
		all = append(all, tt.event)
	}
	// All in one envelope: each event is judged on its own.
	res := Translate(context.Background(), envelope(all...), TranslateOptions{})
	if len(res) != len(tests) {
		t.Fatalf("%d results for %d events", len(res), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := res[i]
			if r.Index != i {
				t.Errorf("Index = %d, want %d", r.Index, i)
			}
			if !json.Valid(r.Raw) || string(r.Raw) != tt.event {
				t.Errorf("Raw = %s, want the event's bytes", r.Raw)
			}
			if r.Reason != tt.reason {
				t.Fatalf("Reason = %q (%v), want %q", r.Reason, r.Err, tt.reason)
			}
			switch {
			case tt.reason != "":
				if r.Err == nil || len(r.Events) != 0 || r.ID == "" {
					t.Errorf("dead letter without error or with events: %+v", r)
				}
				if !strings.Contains(r.Err.Error(), tt.wantField) {
					t.Errorf("error %q does not name %q", r.Err, tt.wantField)
				}
				if tt.reason == ReasonInvalidEvent && !errors.Is(r.Err, events.ErrInvalid) && tt.wantField != "" {
					t.Errorf("error %v is not a ValidationError", r.Err)
				}
			case tt.dropped:
				if r.Dropped == "" || len(r.Events) != 0 {
					t.Errorf("not dropped: %+v", r)
				}
			default:
				if len(r.Events) != 1 || r.Events[0].Validate() != nil {
					t.Errorf("not translated: %+v", r)
				}
				if r.Source != "distribution:reg:5000" || r.Events[0].Host != "reg:5000" {
					t.Errorf("Source = %q, Host = %q, want the addr", r.Source, r.Events[0].Host)
				}
			}
		})
	}
}

func TestTranslateEnvelopeFailures(t *testing.T) {
	big := envelope(strings.Repeat(rawEvent("x", "push", "demo/app", blobTarget(fixtures.L1))+",", 20) + `{}`)
	tests := []struct {
		name   string
		body   []byte
		opts   TranslateOptions
		reason string
		// What could be read of the broken envelope.
		repo, host, source string
	}{
		{name: "not json", body: []byte(`{"events": [`), reason: ReasonMalformedJSON},
		{name: "empty body", body: nil, reason: ReasonMalformedJSON},
		{name: "events not a list", body: []byte(`{"events": {"id": 1}}`), reason: ReasonMalformedJSON},
		{name: "no events", body: []byte(`{"events": []}`), reason: ReasonInvalidEvent},
		{name: "no events field", body: []byte(`{"hello": "world"}`), reason: ReasonInvalidEvent},
		{name: "too large", body: big, opts: TranslateOptions{MaxBodySize: 1000}, reason: ReasonTooLarge,
			repo: "demo/app", host: "reg:5000", source: "distribution:reg:5000"},
		{name: "cut short", body: big[:len(big)/3], reason: ReasonMalformedJSON,
			repo: "demo/app", host: "reg:5000", source: "distribution:reg:5000"},
		{name: "cut inside the first event", body: []byte(`{"events":[{"id":"a","target":{"repository":"demo/app","references":[{"dig`),
			reason: ReasonMalformedJSON, repo: "demo/app"},
		{name: "wrong types further on", body: []byte(`{"events":{"target":{"repository":"a/b"},"source":{"instanceID":"i-1","addr":"h:1"}}}`),
			reason: ReasonMalformedJSON, repo: "a/b", host: "h:1", source: "distribution:i-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Translate(context.Background(), tt.body, tt.opts)
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			r := res[0]
			if r.Index != -1 || r.Reason != tt.reason || r.Err == nil || !strings.HasPrefix(r.ID, "raw:") {
				t.Errorf("got %+v, want an envelope failure %q", r, tt.reason)
			}
			if tt.source == "" {
				tt.source = "distribution"
			}
			if r.Repo != tt.repo || r.Host != tt.host || r.Source != tt.source {
				t.Errorf("read repo %q host %q source %q, want %q %q %q", r.Repo, r.Host, r.Source, tt.repo, tt.host, tt.source)
			}
			if len(r.Raw) > len(tt.body) || len(r.Raw) > tooLargeKeep {
				t.Errorf("Raw holds %d bytes", len(r.Raw))
			}
		})
	}
}

func TestTranslateIDFallbackAndClock(t *testing.T) {
	ev := `{"action":"pull","target":{"repository":"demo","digest":"` + string(fixtures.L1) + `"}}`
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := TranslateOptions{Now: func() time.Time { return now }}
	a := Translate(context.Background(), envelope(ev), opts)
	b := Translate(context.Background(), envelope(ev), opts)
	if len(a[0].Events) != 1 {
		t.Fatalf("not translated: %+v", a[0])
	}
	e := a[0].Events[0]
	if !strings.HasPrefix(e.ID, "raw:") || e.ID != b[0].Events[0].ID {
		t.Errorf("id %q is not a stable content id", e.ID)
	}
	if !e.Time.Equal(now) || e.Source != "distribution" {
		t.Errorf("time %s source %q", e.Time, e.Source)
	}
}

// TestTranslateHost: the registry host (source.addr) becomes Host; one
// that no event may carry is left out and the event still translates.
func TestTranslateHost(t *testing.T) {
	tests := []struct {
		name, addr, want string
	}{
		{"host and port", "registry.example.com:5000", "registry.example.com:5000"},
		{"absent", "", ""},
		{"with a newline", "evil\nhost", ""},
		{"too long", strings.Repeat("h", 256), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := fmt.Sprintf(`{"id":"h1","timestamp":"2026-11-22T22:05:20Z","action":"pull",`+
				`"target":{"repository":"demo","digest":%q},"source":{"addr":%q,"instanceID":"i"}}`, fixtures.L1, tt.addr)
			r := Translate(context.Background(), envelope(ev), TranslateOptions{})[0]
			if r.DeadLettered() || len(r.Events) != 1 {
				t.Fatalf("not translated: %+v", r)
			}
			if r.Events[0].Host != tt.want || r.Host != tt.addr || r.Repo != "demo" {
				t.Errorf("event Host %q (result Host %q, Repo %q), want %q", r.Events[0].Host, r.Host, r.Repo, tt.want)
			}
		})
	}
}

// hugeAnnotationPush is a notification of a manifest push with
// includereferences whose layer carries an annotation of n bytes, encoded
// as Distribution encodes it: its wire types in their field order,
// indented, '<', '>' and '&' escaped.
func hugeAnnotationPush(t testing.TB, id string, n int) []byte {
	t.Helper()
	ts, _ := time.Parse(time.RFC3339, "2026-11-22T22:05:20Z")
	ev := DistributionEvent{
		ID: id, Timestamp: ts, Action: ActionPush,
		Target: DistributionTarget{
			Descriptor: v1.Descriptor{MediaType: events.MediaTypeOCIManifest, Digest: fixtures.M1, Size: int64(n + 500)},
			Repository: "demo", URL: "http://reg/v2/demo/manifests/" + fixtures.M1.String(), Tag: "big",
			References: []v1.Descriptor{
				{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fixtures.Cfg, Size: 7},
				{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: fixtures.L1, Size: 10,
					Annotations: map[string]string{"org.example.notes": strings.Repeat("<&>", n/3)}},
			},
		},
		Request: DistributionRequest{Method: http.MethodPut},
		Source:  DistributionSource{Addr: "reg:5000", InstanceID: "i-1"},
	}
	b, err := json.MarshalIndent(struct {
		Events []DistributionEvent `json:"events"`
	}{[]DistributionEvent{ev}}, "", "   ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTranslateHugeAnnotation: a notification whose reference carries a
// 1.1 MB annotation (escaped, it is several times that) is within the
// default limit and translates into an event far below MaxEncodedSize.
func TestTranslateHugeAnnotation(t *testing.T) {
	body := hugeAnnotationPush(t, "huge-1", 1_100_000)
	if len(body) <= 1<<20 {
		t.Fatalf("notification of %d bytes: not over the old 1 MiB limit", len(body))
	}
	r := Translate(context.Background(), body, TranslateOptions{})[0]
	if r.DeadLettered() || len(r.Events) != 1 {
		t.Fatalf("not translated: %s %v", r.Reason, r.Err)
	}
	m := r.Events[0].Manifest
	if m == nil || len(m.Blobs) != 2 || m.Blobs[1].Digest != fixtures.L1 {
		t.Fatalf("manifest %+v", m)
	}
	b, err := events.Encode(r.Events[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Errorf("encoded event of %d bytes", len(b))
	}
	if _, err := events.Decode(b); err != nil {
		t.Fatal(err)
	}
}

// TestTranslateEnrichment covers the manifest reads of manifest pushes.
func TestTranslateEnrichment(t *testing.T) {
	ctx := context.Background()
	ev030 := fixtures.Read(t, "events/030.json")
	subject := &events.Descriptor{MediaType: events.MediaTypeOCIManifest, Digest: fixtures.FixS, Size: 10}

	// A Docker schema2 manifest pushed with includereferences off: the
	// references come from the manifest itself.
	body := []byte(fixtures.ImageManifest(events.MediaTypeDockerManifest, ""))
	d := digest.FromBytes(body)
	noRefs := envelope(rawEvent("np", "push", "demo", map[string]any{
		"mediaType": events.MediaTypeDockerManifest, "digest": d, "size": len(body), "tag": "latest",
		"url": "http://reg/v2/demo/manifests/" + d.String(),
	}))
	docker := &mapReader{bodies: map[digest.Digest][]byte{d: body}}

	t.Run("subject from the reader", func(t *testing.T) {
		r := Translate(ctx, ev030, TranslateOptions{Reader: fixtureReader(t)})[0]
		if r.EnrichErr != nil || !reflect.DeepEqual(r.Events[0].Manifest.Subject, subject) {
			t.Fatalf("got %+v (%v)", r.Events[0].Manifest, r.EnrichErr)
		}
	})
	t.Run("no reader: no subject, no failure", func(t *testing.T) {
		r := Translate(ctx, ev030, TranslateOptions{})[0]
		if r.EnrichErr != nil || r.Events[0].Manifest.Subject != nil || len(r.Events[0].Manifest.Blobs) != 2 {
			t.Fatalf("got %+v (%v)", r.Events[0].Manifest, r.EnrichErr)
		}
	})
	t.Run("reader fails: translated, failure reported", func(t *testing.T) {
		boom := errors.New("registry unreachable")
		r := Translate(ctx, ev030, TranslateOptions{Reader: &mapReader{err: boom}})[0]
		if !errors.Is(r.EnrichErr, boom) || r.DeadLettered() || len(r.Events) != 1 || r.Events[0].Manifest.Subject != nil {
			t.Fatalf("got %+v", r)
		}
		if len(r.Events[0].Manifest.Blobs) != 2 {
			t.Errorf("references from the event lost: %+v", r.Events[0].Manifest)
		}
		if !r.Events[0].Manifest.Unverified {
			t.Errorf("a manifest whose subject could not be read is not marked unverified")
		}
	})
	t.Run("reader serves other bytes", func(t *testing.T) {
		wrong := &mapReader{bodies: map[digest.Digest][]byte{fxSigned: []byte(`{"schemaVersion":2}`)}}
		r := Translate(ctx, ev030, TranslateOptions{Reader: wrong})[0]
		if !errors.Is(r.EnrichErr, ErrDigestMismatch) || len(r.Events) != 1 {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("references from the manifest", func(t *testing.T) {
		r := Translate(ctx, noRefs, TranslateOptions{Reader: docker})[0]
		if r.EnrichErr != nil || len(r.Events) != 1 {
			t.Fatalf("got %+v", r)
		}
		want := &events.Manifest{Repo: "demo", Digest: d, MediaType: events.MediaTypeDockerManifest, Size: int64(len(body)), Tag: "latest", Blobs: []events.Descriptor{
			{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fixtures.Cfg, Size: 7},
			{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: fixtures.L1, Size: 10},
			{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: fixtures.L2, Size: 20},
		}}
		if !reflect.DeepEqual(r.Events[0].Manifest, want) {
			t.Errorf("got  %+v\nwant %+v", r.Events[0].Manifest, want)
		}
	})
	t.Run("no references and no reader", func(t *testing.T) {
		r := Translate(ctx, noRefs, TranslateOptions{})[0]
		if r.EnrichErr != nil || len(r.Events) != 1 || r.Events[0].Manifest.Blobs != nil {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("docker schema2 with references is not read", func(t *testing.T) {
		rd := fixtureReader(t)
		Translate(ctx, fixtures.Read(t, "events/003.json"), TranslateOptions{Reader: rd})
		if rd.reads.Load() != 0 {
			t.Errorf("read %d manifests", rd.reads.Load())
		}
	})
	t.Run("media type from the manifest", func(t *testing.T) {
		ev := envelope(rawEvent("mt", "push", "demo", map[string]any{
			"digest": fxSigned, "size": 604, "url": "http://reg/v2/demo/manifests/" + fxSigned.String(),
		}))
		r := Translate(ctx, ev, TranslateOptions{Reader: fixtureReader(t)})[0]
		if r.DeadLettered() || r.Events[0].Manifest.MediaType != events.MediaTypeOCIManifest || r.Events[0].Manifest.Subject == nil {
			t.Fatalf("got %+v", r)
		}
		// Without a reader, a manifest of unknown media type cannot be a valid event.
		r = Translate(ctx, ev, TranslateOptions{})[0]
		if r.Reason != ReasonInvalidEvent {
			t.Fatalf("got %+v", r)
		}
	})
	t.Run("reader bounded by EnrichTimeout", func(t *testing.T) {
		r := Translate(ctx, ev030, TranslateOptions{Reader: blockingReader{}, EnrichTimeout: time.Millisecond})[0]
		if !errors.Is(r.EnrichErr, context.DeadlineExceeded) || len(r.Events) != 1 {
			t.Fatalf("got %+v", r)
		}
	})
}

type blockingReader struct{}

func (blockingReader) ReadManifest(ctx context.Context, _ string, _ digest.Digest) ([]byte, string, error) {
	<-ctx.Done()
	return nil, "", ctx.Err()
}

func TestRegistryManifestReader(t *testing.T) {
	body := fixtures.Read(t, "manifests/oci-with-subject.json")
	var lastAccept, lastAuth atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lastAccept.Store(r.Header.Get("Accept"))
		lastAuth.Store(r.Header.Get("Authorization"))
		switch r.URL.Path {
		case "/v2/demo/manifests/" + fxSigned.String():
			w.Header().Set("Content-Type", events.MediaTypeOCIManifest)
			_, _ = w.Write(body)
		case "/v2/demo/manifests/" + fixtures.M1.String():
			w.Header().Set("Content-Type", events.MediaTypeOCIManifest)
			_, _ = w.Write(body) // not the bytes of fixtures.M1
		case "/v2/demo/manifests/" + fixtures.M2.String():
			_, _ = w.Write(make([]byte, 2048))
		case "/v2/private/manifests/" + fxSigned.String():
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()

	t.Run("reads and verifies", func(t *testing.T) {
		r := &RegistryManifestReader{BaseURL: srv.URL + "/", Token: "s3cret"}
		got, mt, err := r.ReadManifest(ctx, "demo", fxSigned)
		if err != nil || string(got) != string(body) || mt != events.MediaTypeOCIManifest {
			t.Fatalf("got %d bytes, %q, %v", len(got), mt, err)
		}
		if lastAuth.Load() != "Bearer s3cret" {
			t.Errorf("Authorization = %q", lastAuth.Load())
		}
		accept := lastAccept.Load().(string)
		for _, want := range events.ManifestMediaTypes() {
			if !strings.Contains(accept, want) {
				t.Errorf("Accept %q lacks %q", accept, want)
			}
		}
	})
	t.Run("basic auth", func(t *testing.T) {
		r := &RegistryManifestReader{BaseURL: srv.URL, Username: "u", Password: "p", Client: srv.Client()}
		if _, _, err := r.ReadManifest(ctx, "demo", fxSigned); err != nil {
			t.Fatal(err)
		}
		if a := lastAuth.Load().(string); !strings.HasPrefix(a, "Basic ") {
			t.Errorf("Authorization = %q", a)
		}
	})
	errs := []struct {
		name    string
		repo    string
		d       digest.Digest
		max     int64
		wantErr error
		wantMsg string
	}{
		{name: "not found", repo: "demo", d: fixtures.L1, wantErr: ErrManifestNotFound},
		{name: "digest mismatch", repo: "demo", d: fixtures.M1, wantErr: ErrDigestMismatch},
		{name: "too large", repo: "demo", d: fixtures.M2, max: 1024, wantErr: events.ErrManifestTooLarge},
		{name: "unauthorized", repo: "private", d: fxSigned, wantMsg: "401"},
		{name: "bad repository, no request", repo: "../v2", d: fxSigned, wantErr: events.ErrInvalid},
		{name: "bad digest, no request", repo: "demo", d: "sha256:../../x", wantErr: events.ErrInvalid},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			r := &RegistryManifestReader{BaseURL: srv.URL, MaxSize: tt.max}
			_, _, err := r.ReadManifest(ctx, tt.repo, tt.d)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("err = %v, want %v %q", err, tt.wantErr, tt.wantMsg)
			}
		})
	}
	t.Run("as the reader of Translate", func(t *testing.T) {
		r := &RegistryManifestReader{BaseURL: srv.URL}
		res := Translate(ctx, fixtures.Read(t, "events/030.json"), TranslateOptions{Reader: r})[0]
		if res.EnrichErr != nil || res.Events[0].Manifest.Subject == nil || res.Events[0].Manifest.Subject.Digest != fixtures.FixS {
			t.Fatalf("got %+v", res)
		}
		res = Translate(ctx, fixtures.Read(t, "events/026.json"), TranslateOptions{Reader: r})[0]
		if !errors.Is(res.EnrichErr, ErrManifestNotFound) || len(res.Events) != 1 {
			t.Fatalf("got %+v", res)
		}
	})
}

func FuzzTranslate(f *testing.F) {
	for _, dir := range []string{"events", "redelivery"} {
		m, _ := filepath.Glob(filepath.Join(fixtures.Dir, dir, "*.json"))
		for _, name := range m {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add(envelope(`"x"`, `{}`, `null`, `{"action":"delete","target":{"repository":"a"}}`))
	f.Add([]byte(`{"events":null}`))
	reader := fixtureReader(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		res := Translate(context.Background(), body, TranslateOptions{Reader: reader})
		if len(res) == 0 {
			t.Fatal("no result")
		}
		for _, r := range res {
			n := 0
			if r.DeadLettered() {
				n++
				if r.Err == nil || len(r.Events) > 0 {
					t.Fatalf("inconsistent dead letter %+v", r)
				}
			}
			if r.Dropped != "" {
				n++
			}
			if len(r.Events) > 0 {
				n++
			}
			if n != 1 {
				t.Fatalf("result is not exactly one of translated, dropped, dead-lettered: %+v", r)
			}
			if r.ID == "" {
				t.Fatal("result without id")
			}
			for _, e := range r.Events {
				if err := e.Validate(); err != nil {
					t.Fatalf("invalid event out of Translate: %v", err)
				}
			}
		}
	})
}
