package events

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events/internal/fixtures"
)

func indexManifest(mt string, extra string) string {
	mtField := ""
	if mt != "" {
		mtField = fmt.Sprintf(`"mediaType":%q,`, mt)
	}
	return fmt.Sprintf(`{"schemaVersion":2,%s"manifests":[`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":100,"platform":{"architecture":"amd64","os":"linux"}},`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":200}]%s}`,
		mtField, fixtures.M1, fixtures.M2, extra)
}

func schema1(signed bool) string {
	sig := ""
	if signed {
		sig = `,"signatures":[{"header":{"alg":"ES256"},"signature":"abc","protected":"def"}]`
	}
	return fmt.Sprintf(`{"schemaVersion":1,"name":"demo","tag":"v1","architecture":"amd64",`+
		`"fsLayers":[{"blobSum":%q},{"blobSum":%q},{"blobSum":%q}],"history":[]%s}`, fixtures.L2, fixtures.L1, fixtures.L2, sig)
}

var (
	imageBlobs = []Descriptor{
		{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fixtures.Cfg, Size: 7},
		{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: fixtures.L1, Size: 10},
		{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: fixtures.L2, Size: 20},
	}
	indexChildren = []Descriptor{
		{MediaType: MediaTypeOCIManifest, Digest: fixtures.M1, Size: 100},
		{MediaType: MediaTypeOCIManifest, Digest: fixtures.M2, Size: 200},
	}
	schema1Blobs = []Descriptor{
		{MediaType: mediaTypeSchema1Layer, Digest: fixtures.L2},
		{MediaType: mediaTypeSchema1Layer, Digest: fixtures.L1},
	}
	subjectField = fmt.Sprintf(`,"subject":{"mediaType":%q,"digest":%q,"size":55}`, MediaTypeOCIManifest, fixtures.Subj)
	subjectDesc  = &Descriptor{MediaType: MediaTypeOCIManifest, Digest: fixtures.Subj, Size: 55}
)

func TestParseManifest(t *testing.T) {
	fixture := fixtures.Read(t, "manifests/oci-with-subject.json")
	tests := []struct {
		name, mediaType, body string
		want                  ManifestRefs
		wantErr               error
	}{
		{name: "oci image", mediaType: MediaTypeOCIManifest, body: fixtures.ImageManifest(MediaTypeOCIManifest, ""),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "oci image without mediaType field", mediaType: MediaTypeOCIManifest, body: fixtures.ImageManifest("", ""),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "oci image with parameters", mediaType: MediaTypeOCIManifest + "; charset=utf-8", body: fixtures.ImageManifest(MediaTypeOCIManifest, ""),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "docker schema2", mediaType: MediaTypeDockerManifest, body: fixtures.ImageManifest(MediaTypeDockerManifest, ""),
			want: ManifestRefs{MediaType: MediaTypeDockerManifest, Blobs: imageBlobs}},
		{name: "oci index", mediaType: MediaTypeOCIIndex, body: indexManifest(MediaTypeOCIIndex, ""),
			want: ManifestRefs{MediaType: MediaTypeOCIIndex, Children: indexChildren}},
		{name: "oci index with subject", mediaType: MediaTypeOCIIndex, body: indexManifest(MediaTypeOCIIndex, subjectField+`,"artifactType":"application/x.sbom"`),
			want: ManifestRefs{MediaType: MediaTypeOCIIndex, Children: indexChildren, Subject: subjectDesc, ArtifactType: "application/x.sbom"}},
		{name: "docker manifest list", mediaType: MediaTypeDockerList, body: indexManifest(MediaTypeDockerList, ""),
			want: ManifestRefs{MediaType: MediaTypeDockerList, Children: indexChildren}},
		{name: "schema1 unsigned", mediaType: MediaTypeDockerSchema1, body: schema1(false),
			want: ManifestRefs{MediaType: MediaTypeDockerSchema1, Blobs: schema1Blobs}},
		{name: "schema1 signed", mediaType: MediaTypeDockerSchema1JWS, body: schema1(true),
			want: ManifestRefs{MediaType: MediaTypeDockerSchema1JWS, Blobs: schema1Blobs}},
		{name: "oci artifact via subject (fixture)", mediaType: MediaTypeOCIManifest, body: string(fixture),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, ArtifactType: "application/vnd.example.sig",
				Blobs: []Descriptor{
					{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fixtures.FixA, Size: 233},
					{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: fixtures.FixB, Size: 138},
				},
				Subject: &Descriptor{MediaType: MediaTypeOCIManifest, Digest: fixtures.FixS, Size: 10}}},
		{name: "oci artifact manifest (1.1 draft)", mediaType: MediaTypeOCIArtifact,
			body: fmt.Sprintf(`{"mediaType":%q,"artifactType":"application/x.sig","blobs":[{"mediaType":"application/x.sig","digest":%q,"size":3}]%s}`, MediaTypeOCIArtifact, fixtures.L1, subjectField),
			want: ManifestRefs{MediaType: MediaTypeOCIArtifact, ArtifactType: "application/x.sig", Blobs: []Descriptor{{MediaType: "application/x.sig", Digest: fixtures.L1, Size: 3}}, Subject: subjectDesc}},
		{name: "subject ignored on docker schema2", mediaType: MediaTypeDockerManifest, body: fixtures.ImageManifest(MediaTypeDockerManifest, subjectField),
			want: ManifestRefs{MediaType: MediaTypeDockerManifest, Blobs: imageBlobs}},

		// Detection from the body.
		{name: "detect from mediaType field", mediaType: "", body: string(fixture),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, ArtifactType: "application/vnd.example.sig",
				Blobs: []Descriptor{
					{MediaType: "application/vnd.oci.image.config.v1+json", Digest: fixtures.FixA, Size: 233},
					{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: fixtures.FixB, Size: 138},
				},
				Subject: &Descriptor{MediaType: MediaTypeOCIManifest, Digest: fixtures.FixS, Size: 10}}},
		{name: "detect generic application/json", mediaType: "application/json", body: indexManifest(MediaTypeDockerList, ""),
			want: ManifestRefs{MediaType: MediaTypeDockerList, Children: indexChildren}},
		{name: "detect index by shape", mediaType: "application/octet-stream", body: indexManifest("", ""),
			want: ManifestRefs{MediaType: MediaTypeOCIIndex, Children: indexChildren}},
		{name: "detect image by shape", mediaType: "text/plain", body: fixtures.ImageManifest("", ""),
			want: ManifestRefs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "detect schema1 unsigned", mediaType: "", body: schema1(false),
			want: ManifestRefs{MediaType: MediaTypeDockerSchema1, Blobs: schema1Blobs}},
		{name: "detect schema1 signed", mediaType: "", body: schema1(true),
			want: ManifestRefs{MediaType: MediaTypeDockerSchema1JWS, Blobs: schema1Blobs}},
		{name: "empty index", mediaType: MediaTypeOCIIndex, body: `{"schemaVersion":2,"manifests":[]}`,
			want: ManifestRefs{MediaType: MediaTypeOCIIndex}},

		// Refusals.
		{name: "unknown media type", mediaType: "application/vnd.example.thing", body: `{}`, wantErr: ErrUnknownMediaType},
		{name: "unknown body media type", mediaType: "", body: `{"schemaVersion":2,"mediaType":"application/x.foo"}`, wantErr: ErrUnknownMediaType},
		{name: "undetectable", mediaType: "application/json", body: `{"hello":"world"}`, wantErr: ErrUnknownMediaType},
		{name: "undetectable schemaVersion 3", mediaType: "", body: `{"schemaVersion":3,"config":{}}`, wantErr: ErrUnknownMediaType},
		{name: "not json", mediaType: MediaTypeOCIManifest, body: `{"schemaVersion":`, wantErr: ErrMalformedManifest},
		{name: "json array", mediaType: MediaTypeOCIManifest, body: `[1,2]`, wantErr: ErrMalformedManifest},
		{name: "media type contradiction", mediaType: MediaTypeOCIManifest, body: indexManifest(MediaTypeOCIIndex, ""), wantErr: ErrMalformedManifest},
		{name: "missing config", mediaType: MediaTypeOCIManifest, body: `{"schemaVersion":2,"layers":[]}`, wantErr: ErrMalformedManifest},
		{name: "missing schemaVersion", mediaType: MediaTypeDockerManifest, body: fmt.Sprintf(`{"config":{"digest":%q,"size":1}}`, fixtures.Cfg), wantErr: ErrMalformedManifest},
		{name: "wrong schemaVersion", mediaType: MediaTypeDockerSchema1, body: `{"schemaVersion":2,"fsLayers":[]}`, wantErr: ErrMalformedManifest},
		{name: "bad layer digest", mediaType: MediaTypeOCIManifest,
			body: fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":1},"layers":[{"digest":%q,"size":1}]}`, fixtures.Cfg, fixtures.BadDigest), wantErr: ErrMalformedManifest},
		{name: "upper-case digest", mediaType: MediaTypeOCIManifest,
			body: fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":1}}`, strings.ToUpper(string(fixtures.Cfg))), wantErr: ErrMalformedManifest},
		{name: "unknown digest algorithm", mediaType: MediaTypeOCIIndex,
			body: `{"schemaVersion":2,"manifests":[{"digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}]}`, wantErr: ErrMalformedManifest},
		{name: "negative size", mediaType: MediaTypeOCIIndex,
			body: fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"digest":%q,"size":-1}]}`, fixtures.M1), wantErr: ErrMalformedManifest},
		{name: "bad subject digest", mediaType: MediaTypeOCIManifest, body: fixtures.ImageManifest(MediaTypeOCIManifest, `,"subject":{"digest":"sha256:zz","size":1}`), wantErr: ErrMalformedManifest},
		{name: "bad schema1 blobSum", mediaType: MediaTypeDockerSchema1, body: `{"schemaVersion":1,"fsLayers":[{"blobSum":"nope"}]}`, wantErr: ErrMalformedManifest},
		{name: "too large", mediaType: MediaTypeOCIManifest, body: strings.Repeat(" ", MaxManifestSize+1), wantErr: ErrManifestTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseManifest(tt.mediaType, []byte(tt.body))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestManifestMediaTypes(t *testing.T) {
	for _, mt := range ManifestMediaTypes() {
		if !IsManifestMediaType(mt) {
			t.Errorf("IsManifestMediaType(%q) = false", mt)
		}
	}
	if IsManifestMediaType("application/octet-stream") || IsManifestMediaType("") {
		t.Error("generic types must not be manifest types")
	}
	if !IsIndexMediaType(MediaTypeDockerList+"; x=y") || IsIndexMediaType(MediaTypeOCIManifest) {
		t.Error("IsIndexMediaType is wrong")
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add("", fixtures.Read(f, "manifests/oci-with-subject.json"))
	for _, s := range []struct{ mt, body string }{
		{MediaTypeOCIManifest, fixtures.ImageManifest(MediaTypeOCIManifest, subjectField)},
		{MediaTypeOCIIndex, indexManifest("", subjectField)},
		{"application/json", indexManifest(MediaTypeDockerList, "")},
		{MediaTypeDockerSchema1JWS, schema1(true)},
		{"", schema1(false)},
		{MediaTypeOCIArtifact, `{"blobs":[{"digest":"sha256:00","size":-1}]}`},
		{"", `{"schemaVersion":2,"mediaType":null,"manifests":null,"config":null}`},
		{"text/plain; =", `[]`},
	} {
		f.Add(s.mt, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, mt string, body []byte) {
		r, err := ParseManifest(mt, body)
		if err != nil {
			if r.MediaType != "" || r.Blobs != nil || r.Children != nil || r.Subject != nil {
				t.Fatalf("error %v with a non-zero result %+v", err, r)
			}
			return
		}
		if !IsManifestMediaType(r.MediaType) {
			t.Fatalf("accepted unknown media type %q", r.MediaType)
		}
		for _, list := range [][]Descriptor{r.Blobs, r.Children} {
			seen := map[digest.Digest]bool{}
			for _, d := range list {
				if err := ValidateDigest(d.Digest); err != nil || d.Size < 0 {
					t.Fatalf("accepted bad descriptor %+v", d)
				}
				if seen[d.Digest] {
					t.Fatalf("repeated digest %s", d.Digest)
				}
				seen[d.Digest] = true
			}
		}
		if r.Subject != nil {
			if err := ValidateDigest(r.Subject.Digest); err != nil {
				t.Fatalf("accepted bad subject %+v", r.Subject)
			}
		}
	})
}
