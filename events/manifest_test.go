package events

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

const fixtureDir = "testdata/distribution-v3.1.2"

func readFixture(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	dCfg   = digest.FromString("config")
	dL1    = digest.FromString("layer1")
	dL2    = digest.FromString("layer2")
	dM1    = digest.FromString("manifest1")
	dM2    = digest.FromString("manifest2")
	dSubj  = digest.FromString("subject")
	dFixA  = digest.Digest("sha256:3cbf87024f2b5eabe49dadedbc81b1612253a1e353077237723295ca0d5b6848")
	dFixB  = digest.Digest("sha256:90a0fb77ceecf1d9b55ba1685c51cd320b12383aac98d2aff7882949ac06165e")
	dFixS  = digest.Digest("sha256:0000000000000000000000000000000000000000000000000000000000000001")
	badDig = "sha256:1234"
)

func imageManifest(mt string, extra string) string {
	mtField := ""
	if mt != "" {
		mtField = fmt.Sprintf(`"mediaType":%q,`, mt)
	}
	return fmt.Sprintf(`{"schemaVersion":2,%s"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":7},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":10},`+
		`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":20},`+
		`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":10}]%s}`,
		mtField, dCfg, dL1, dL2, dL1, extra)
}

func indexManifest(mt string, extra string) string {
	mtField := ""
	if mt != "" {
		mtField = fmt.Sprintf(`"mediaType":%q,`, mt)
	}
	return fmt.Sprintf(`{"schemaVersion":2,%s"manifests":[`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":100,"platform":{"architecture":"amd64","os":"linux"}},`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":200}]%s}`,
		mtField, dM1, dM2, extra)
}

func schema1(signed bool) string {
	sig := ""
	if signed {
		sig = `,"signatures":[{"header":{"alg":"ES256"},"signature":"abc","protected":"def"}]`
	}
	return fmt.Sprintf(`{"schemaVersion":1,"name":"demo","tag":"v1","architecture":"amd64",`+
		`"fsLayers":[{"blobSum":%q},{"blobSum":%q},{"blobSum":%q}],"history":[]%s}`, dL2, dL1, dL2, sig)
}

var (
	imageBlobs = []Descriptor{
		{MediaType: "application/vnd.oci.image.config.v1+json", Digest: dCfg, Size: 7},
		{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: dL1, Size: 10},
		{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: dL2, Size: 20},
	}
	indexChildren = []Descriptor{
		{MediaType: MediaTypeOCIManifest, Digest: dM1, Size: 100},
		{MediaType: MediaTypeOCIManifest, Digest: dM2, Size: 200},
	}
	schema1Blobs = []Descriptor{
		{MediaType: mediaTypeSchema1Layer, Digest: dL2},
		{MediaType: mediaTypeSchema1Layer, Digest: dL1},
	}
	subjectField = fmt.Sprintf(`,"subject":{"mediaType":%q,"digest":%q,"size":55}`, MediaTypeOCIManifest, dSubj)
	subjectDesc  = &Descriptor{MediaType: MediaTypeOCIManifest, Digest: dSubj, Size: 55}
)

func TestParseManifest(t *testing.T) {
	fixture := readFixture(t, "manifests/oci-with-subject.json")
	tests := []struct {
		name, mediaType, body string
		want                  Refs
		wantErr               error
	}{
		{name: "oci image", mediaType: MediaTypeOCIManifest, body: imageManifest(MediaTypeOCIManifest, ""),
			want: Refs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "oci image without mediaType field", mediaType: MediaTypeOCIManifest, body: imageManifest("", ""),
			want: Refs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "oci image with parameters", mediaType: MediaTypeOCIManifest + "; charset=utf-8", body: imageManifest(MediaTypeOCIManifest, ""),
			want: Refs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "docker schema2", mediaType: MediaTypeDockerManifest, body: imageManifest(MediaTypeDockerManifest, ""),
			want: Refs{MediaType: MediaTypeDockerManifest, Blobs: imageBlobs}},
		{name: "oci index", mediaType: MediaTypeOCIIndex, body: indexManifest(MediaTypeOCIIndex, ""),
			want: Refs{MediaType: MediaTypeOCIIndex, Children: indexChildren}},
		{name: "oci index with subject", mediaType: MediaTypeOCIIndex, body: indexManifest(MediaTypeOCIIndex, subjectField+`,"artifactType":"application/x.sbom"`),
			want: Refs{MediaType: MediaTypeOCIIndex, Children: indexChildren, Subject: subjectDesc, ArtifactType: "application/x.sbom"}},
		{name: "docker manifest list", mediaType: MediaTypeDockerList, body: indexManifest(MediaTypeDockerList, ""),
			want: Refs{MediaType: MediaTypeDockerList, Children: indexChildren}},
		{name: "schema1 unsigned", mediaType: MediaTypeDockerSchema1, body: schema1(false),
			want: Refs{MediaType: MediaTypeDockerSchema1, Blobs: schema1Blobs}},
		{name: "schema1 signed", mediaType: MediaTypeDockerSchema1JWS, body: schema1(true),
			want: Refs{MediaType: MediaTypeDockerSchema1JWS, Blobs: schema1Blobs}},
		{name: "oci artifact via subject (fixture)", mediaType: MediaTypeOCIManifest, body: string(fixture),
			want: Refs{MediaType: MediaTypeOCIManifest, ArtifactType: "application/vnd.example.sig",
				Blobs: []Descriptor{
					{MediaType: "application/vnd.oci.image.config.v1+json", Digest: dFixA, Size: 233},
					{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: dFixB, Size: 138},
				},
				Subject: &Descriptor{MediaType: MediaTypeOCIManifest, Digest: dFixS, Size: 10}}},
		{name: "oci artifact manifest (1.1 draft)", mediaType: MediaTypeOCIArtifact,
			body: fmt.Sprintf(`{"mediaType":%q,"artifactType":"application/x.sig","blobs":[{"mediaType":"application/x.sig","digest":%q,"size":3}]%s}`, MediaTypeOCIArtifact, dL1, subjectField),
			want: Refs{MediaType: MediaTypeOCIArtifact, ArtifactType: "application/x.sig", Blobs: []Descriptor{{MediaType: "application/x.sig", Digest: dL1, Size: 3}}, Subject: subjectDesc}},
		{name: "subject ignored on docker schema2", mediaType: MediaTypeDockerManifest, body: imageManifest(MediaTypeDockerManifest, subjectField),
			want: Refs{MediaType: MediaTypeDockerManifest, Blobs: imageBlobs}},

		// Detection from the body.
		{name: "detect from mediaType field", mediaType: "", body: string(fixture),
			want: Refs{MediaType: MediaTypeOCIManifest, ArtifactType: "application/vnd.example.sig",
				Blobs: []Descriptor{
					{MediaType: "application/vnd.oci.image.config.v1+json", Digest: dFixA, Size: 233},
					{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: dFixB, Size: 138},
				},
				Subject: &Descriptor{MediaType: MediaTypeOCIManifest, Digest: dFixS, Size: 10}}},
		{name: "detect generic application/json", mediaType: "application/json", body: indexManifest(MediaTypeDockerList, ""),
			want: Refs{MediaType: MediaTypeDockerList, Children: indexChildren}},
		{name: "detect index by shape", mediaType: "application/octet-stream", body: indexManifest("", ""),
			want: Refs{MediaType: MediaTypeOCIIndex, Children: indexChildren}},
		{name: "detect image by shape", mediaType: "text/plain", body: imageManifest("", ""),
			want: Refs{MediaType: MediaTypeOCIManifest, Blobs: imageBlobs, ArtifactType: "application/vnd.oci.image.config.v1+json"}},
		{name: "detect schema1 unsigned", mediaType: "", body: schema1(false),
			want: Refs{MediaType: MediaTypeDockerSchema1, Blobs: schema1Blobs}},
		{name: "detect schema1 signed", mediaType: "", body: schema1(true),
			want: Refs{MediaType: MediaTypeDockerSchema1JWS, Blobs: schema1Blobs}},
		{name: "empty index", mediaType: MediaTypeOCIIndex, body: `{"schemaVersion":2,"manifests":[]}`,
			want: Refs{MediaType: MediaTypeOCIIndex}},

		// Refusals.
		{name: "unknown media type", mediaType: "application/vnd.example.thing", body: `{}`, wantErr: ErrUnknownMediaType},
		{name: "unknown body media type", mediaType: "", body: `{"schemaVersion":2,"mediaType":"application/x.foo"}`, wantErr: ErrUnknownMediaType},
		{name: "undetectable", mediaType: "application/json", body: `{"hello":"world"}`, wantErr: ErrUnknownMediaType},
		{name: "undetectable schemaVersion 3", mediaType: "", body: `{"schemaVersion":3,"config":{}}`, wantErr: ErrUnknownMediaType},
		{name: "not json", mediaType: MediaTypeOCIManifest, body: `{"schemaVersion":`, wantErr: ErrMalformedManifest},
		{name: "json array", mediaType: MediaTypeOCIManifest, body: `[1,2]`, wantErr: ErrMalformedManifest},
		{name: "media type contradiction", mediaType: MediaTypeOCIManifest, body: indexManifest(MediaTypeOCIIndex, ""), wantErr: ErrMalformedManifest},
		{name: "missing config", mediaType: MediaTypeOCIManifest, body: `{"schemaVersion":2,"layers":[]}`, wantErr: ErrMalformedManifest},
		{name: "missing schemaVersion", mediaType: MediaTypeDockerManifest, body: fmt.Sprintf(`{"config":{"digest":%q,"size":1}}`, dCfg), wantErr: ErrMalformedManifest},
		{name: "wrong schemaVersion", mediaType: MediaTypeDockerSchema1, body: `{"schemaVersion":2,"fsLayers":[]}`, wantErr: ErrMalformedManifest},
		{name: "bad layer digest", mediaType: MediaTypeOCIManifest,
			body: fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":1},"layers":[{"digest":%q,"size":1}]}`, dCfg, badDig), wantErr: ErrMalformedManifest},
		{name: "upper-case digest", mediaType: MediaTypeOCIManifest,
			body: fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":1}}`, strings.ToUpper(string(dCfg))), wantErr: ErrMalformedManifest},
		{name: "unknown digest algorithm", mediaType: MediaTypeOCIIndex,
			body: `{"schemaVersion":2,"manifests":[{"digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}]}`, wantErr: ErrMalformedManifest},
		{name: "negative size", mediaType: MediaTypeOCIIndex,
			body: fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"digest":%q,"size":-1}]}`, dM1), wantErr: ErrMalformedManifest},
		{name: "bad subject digest", mediaType: MediaTypeOCIManifest, body: imageManifest(MediaTypeOCIManifest, `,"subject":{"digest":"sha256:zz","size":1}`), wantErr: ErrMalformedManifest},
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
	f.Add("", readFixture(f, "manifests/oci-with-subject.json"))
	for _, s := range []struct{ mt, body string }{
		{MediaTypeOCIManifest, imageManifest(MediaTypeOCIManifest, subjectField)},
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
