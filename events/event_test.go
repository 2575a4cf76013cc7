package events

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var (
	evTime = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	dA     = digest.FromString("a")
	dB     = digest.FromString("b")
)

// validEvents has one valid event of every kind.
func validEvents() []Event {
	base := func(k Kind) Event {
		return Event{V: Version, ID: "id-" + string(k), Time: evTime, Source: "test", Kind: k}
	}
	with := func(e Event, set func(*Event)) Event { set(&e); return e }
	return []Event{
		with(base(ManifestPushed), func(e *Event) {
			e.Manifest = &Manifest{Repo: "team/app", Digest: dA, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10,
				Blobs: []Descriptor{{Digest: dB, Size: 3}}, Subject: &Descriptor{Digest: dB}, Tag: "v1.0", Legacy: "img1"}
		}),
		with(base(TagSet), func(e *Event) { e.Tag = &Tag{Repo: "app", Name: "latest", Digest: dA} }),
		with(base(TagDeleted), func(e *Event) { e.Tag = &Tag{Repo: "app", Name: "latest"} }),
		with(base(DigestDeleted), func(e *Event) { e.Ref = &RepoDigest{Repo: "app", Digest: dA} }),
		with(base(BlobPushed), func(e *Event) { e.Blob = &Blob{Repo: "app", Digest: dA, Size: 1} }),
		with(base(BlobMounted), func(e *Event) { e.Blob = &Blob{Repo: "b", Digest: dA, Size: 1, From: "app"} }),
		with(base(Touched), func(e *Event) { e.Ref = &RepoDigest{Repo: "app", Digest: dA} }),
		with(base(RepositoryDeleted), func(e *Event) { e.Repo = &Repo{Name: "app"} }),
		with(base(LabelAttached), func(e *Event) { e.Label = &Label{Repo: "app", Digest: dA, ID: "k=v"} }),
		with(base(LabelDetached), func(e *Event) { e.Label = &Label{Repo: "app", Digest: dA, ID: "k=v"} }),
		with(base(LegacyImageCreated), func(e *Event) {
			e.Legacy = &LegacyImage{Repo: "app", ID: "img2", Parent: "img1", Storage: dA, Derived: []digest.Digest{dB}}
		}),
		with(base(LegacyDerived), func(e *Event) {
			e.Legacy = &LegacyImage{Repo: "app", ID: "img2", Derived: []digest.Digest{dB}}
		}),
		with(base(BlobObserved), func(e *Event) { e.Blob = &Blob{Digest: dA, Size: 1} }),
		with(base(ObservedAbsent), func(e *Event) {
			e.Absent = &Observation{Node: NodeRef{Kind: NodeLayer, Repo: "app", Digest: dA}, AsOf: 7}
		}),
		with(base(Collected), func(e *Event) {
			e.Collected = &CollectedRef{Node: NodeRef{Kind: NodeBlob, Digest: dA}, Purged: true, Intent: "i", AsOf: 7}
		}),
		with(base(Healed), func(e *Event) {
			e.Collected = &CollectedRef{Node: NodeRef{Kind: NodeLayer, Repo: "app", Digest: dA}}
		}),
		with(base(Refused), func(e *Event) {
			e.Refused = &RefusedRef{Reason: "too_large", Repo: "app"}
			e.Host, e.Received = "reg:5000", e.Time.Add(time.Second)
		}),
		with(base(Reconciled), func(e *Event) {
			e.Reconcile = &Reconciliation{AsOf: 9, Repos: []string{"app"}, Partition: "r1", Layout: "2/3"}
		}),
		with(base(BlobHeld), func(e *Event) {
			e.Held = &Holding{Partition: 1, Layout: "2/3", Digest: dA, Held: true, Lease: evTime, Size: 3, Version: 7}
		}),
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	evs := validEvents()
	if len(evs) != len(Kinds) {
		t.Fatalf("%d kinds, %d test events", len(Kinds), len(evs))
	}
	for _, e := range evs {
		t.Run(string(e.Kind), func(t *testing.T) {
			b, err := Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
			}
		})
	}
}

func TestDecodeVersionsAndUnknownFields(t *testing.T) {
	e := validEvents()[1]
	b, _ := Encode(e)
	var m map[string]any
	_ = json.Unmarshal(b, &m)

	m["futureField"] = map[string]any{"x": 1}
	m["tag"].(map[string]any)["alsoNew"] = true
	withUnknown, _ := json.Marshal(m)
	got, err := Decode(withUnknown)
	if err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("unknown fields: %+v, %v", got, err)
	}

	m["v"] = Version + 1
	newer, _ := json.Marshal(m)
	if _, err := Decode(newer); !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), "2") {
		t.Fatalf("newer version: %v", err)
	}
	if _, err := Decode([]byte(`{"v":1,`)); err == nil || errors.Is(err, ErrInvalid) {
		t.Fatalf("malformed JSON: %v", err)
	}
	huge := make([]byte, MaxEncodedSize+1)
	if _, err := Decode(huge); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("huge input: %v", err)
	}
}

func TestValidateRefuses(t *testing.T) {
	tag := func(repo, name string, d digest.Digest) Event {
		return Event{V: 1, ID: "x", Time: evTime, Kind: TagSet, Tag: &Tag{Repo: repo, Name: name, Digest: d}}
	}
	manifest := func(set func(*Manifest)) Event {
		m := &Manifest{Repo: "app", Digest: dA, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1}
		set(m)
		return Event{V: 1, ID: "x", Time: evTime, Kind: ManifestPushed, Manifest: m}
	}
	derived := func(set func(*LegacyImage)) Event {
		l := &LegacyImage{Repo: "app", ID: "img1", Derived: []digest.Digest{dB}}
		set(l)
		return Event{V: 1, ID: "x", Time: evTime, Kind: LegacyDerived, Legacy: l}
	}
	tests := []struct {
		name  string
		ev    Event
		field string
	}{
		{"dot-dot in a repository", tag("a/../b", "v", dA), "tag.repo"},
		{"leading slash", tag("/app", "v", dA), "tag.repo"},
		{"upper case", tag("App", "v", dA), "tag.repo"},
		{"NUL byte", tag("ap\x00p", "v", dA), "tag.repo"},
		{"trailing slash", tag("app/", "v", dA), "tag.repo"},
		{"longer than 255", tag(strings.Repeat("a", 256), "v", dA), "tag.repo"},
		{"tag starting with a dot", tag("app", ".v", dA), "tag.name"},
		{"tag longer than 128", tag("app", strings.Repeat("v", 129), dA), "tag.name"},
		{"malformed digest", tag("app", "v", "sha256:../../x"), "tag.digest"},
		{"unknown algorithm", tag("app", "v", "md5:d41d8cd98f00b204e9800998ecf8427e"), "tag.digest"},
		{"missing digest", tag("app", "v", ""), "tag.digest"},
		{"negative size", manifest(func(m *Manifest) { m.Size = -1 }), "manifest.size"},
		{"missing media type", manifest(func(m *Manifest) { m.MediaType = "" }), "manifest.mediaType"},
		{"bad layer digest", manifest(func(m *Manifest) { m.Blobs = []Descriptor{{Digest: "sha256:zz"}} }), "manifest.blobs[0].digest"},
		{"negative layer size", manifest(func(m *Manifest) { m.Blobs = []Descriptor{{Digest: dB, Size: -5}} }), "manifest.blobs[0].size"},
		{"missing body", Event{V: 1, ID: "x", Time: evTime, Kind: TagSet}, "tag"},
		{"two bodies", Event{V: 1, ID: "x", Time: evTime, Kind: Touched, Ref: &RepoDigest{Repo: "a", Digest: dA}, Repo: &Repo{Name: "a"}}, "kind"},
		{"unknown kind", Event{V: 1, ID: "x", Time: evTime, Kind: "blob.teleported"}, "kind"},
		{"missing id", Event{V: 1, Time: evTime, Kind: RepositoryDeleted, Repo: &Repo{Name: "a"}}, "id"},
		{"missing time", Event{V: 1, ID: "x", Kind: RepositoryDeleted, Repo: &Repo{Name: "a"}}, "time"},
		{"derived storage without a blob", derived(func(l *LegacyImage) { l.Derived = nil }), "legacy.derived"},
		{"derived storage with a parent", derived(func(l *LegacyImage) { l.Parent = "img0" }), "legacy.parent"},
		{"derived storage with its image's storage", derived(func(l *LegacyImage) { l.Storage = dA }), "legacy.storage"},
		{"derived storage with a bad digest", derived(func(l *LegacyImage) { l.Derived = []digest.Digest{"sha256:zz"} }), "legacy.derived[0]"},
		{"derived storage of a bad image id", derived(func(l *LegacyImage) { l.ID = "a b" }), "legacy.id"},
		{"unknown node kind", Event{V: 1, ID: "x", Time: evTime, Kind: ObservedAbsent, Absent: &Observation{Node: NodeRef{Kind: "disk"}}}, "absent.node.kind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ev.Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("want a *ValidationError, got %v", err)
			}
			if ve.Field != tc.field || ve.Reason == "" {
				t.Fatalf("field %q reason %q, want field %q", ve.Field, ve.Reason, tc.field)
			}
		})
	}
}

func TestValidateAcceptsTheGrammar(t *testing.T) {
	for _, repo := range []string{"a", "library/alpine", "a.b/c_d/e--f", "a__b", strings.Repeat("a", 255)} {
		if err := ValidateRepo(repo); err != nil {
			t.Errorf("ValidateRepo(%q): %v", repo, err)
		}
	}
	for _, tag := range []string{"v1", "V1.0-rc_1", "_x", strings.Repeat("t", 128)} {
		if err := ValidateTag(tag); err != nil {
			t.Errorf("ValidateTag(%q): %v", tag, err)
		}
	}
}

// FuzzDecode: no input panics Decode, and what it accepts validates.
func FuzzDecode(f *testing.F) {
	for _, e := range validEvents() {
		b, _ := Encode(e)
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"id":"x","kind":"tag.set","tag":{"repo":"..","name":"v"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err == nil {
			if verr := e.Validate(); verr != nil {
				t.Fatalf("Decode accepted an invalid event: %v", verr)
			}
		}
	})
}

func TestParseRef(t *testing.T) {
	good := map[string]NodeKind{
		"app:v1":                     NodeTag,
		"registry.local/app:v1":      NodeTag,
		"app@sha256:" + refHex:       NodeManifest,
		"layer:a/b@sha256:" + refHex: NodeLayer,
		"blob:sha256:" + refHex:      NodeBlob,
		"team/app.x:latest":          NodeTag,
	}
	for s, kind := range good {
		ref, err := ParseRef(s)
		if err != nil || ref.Kind != kind {
			t.Errorf("ParseRef(%q) = %+v, %v", s, ref, err)
		}
	}
	for _, s := range []string{"app", "../x:v1", "App:v1", "app@sha256:zz", "blob:nope", "a/../../b:v1", "app:\x00"} {
		if _, err := ParseRef(s); err == nil {
			t.Errorf("ParseRef(%q) accepted", s)
		}
	}
}

const refHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
