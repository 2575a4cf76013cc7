package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize bounds the manifests ParseManifest accepts. It matches the
// limit CNCF Distribution applies to manifest uploads.
const MaxManifestSize = 4 << 20

// ErrUnknownMediaType is returned by ParseManifest for a media type that is
// not one of the manifest formats it knows, after detection from the body.
var ErrUnknownMediaType = errors.New("events: unknown manifest media type")

// ErrManifestTooLarge is returned by ParseManifest (and by the manifest
// reader) for a manifest over MaxManifestSize.
var ErrManifestTooLarge = errors.New("events: manifest too large")

// ErrMalformedManifest is returned by ParseManifest for a body that is not
// valid JSON of its format, has a bad digest or size, or whose mediaType
// field contradicts the media type it was served with.
var ErrMalformedManifest = errors.New("events: malformed manifest")

// Manifest media types ParseManifest understands.
const (
	MediaTypeOCIManifest      = v1.MediaTypeImageManifest // application/vnd.oci.image.manifest.v1+json
	MediaTypeOCIIndex         = v1.MediaTypeImageIndex    // application/vnd.oci.image.index.v1+json
	MediaTypeOCIArtifact      = "application/vnd.oci.artifact.manifest.v1+json"
	MediaTypeDockerManifest   = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList       = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerSchema1    = "application/vnd.docker.distribution.manifest.v1+json"
	MediaTypeDockerSchema1JWS = "application/vnd.docker.distribution.manifest.v1+prettyjws"

	// mediaTypeSchema1Layer is what Distribution reported for schema1 layers.
	mediaTypeSchema1Layer = "application/vnd.docker.container.image.rootfs.diff+x-gtar"
)

// manifestMediaTypes lists the known manifest formats, preferred first.
var manifestMediaTypes = []string{
	MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerManifest,
	MediaTypeOCIArtifact, MediaTypeDockerSchema1JWS, MediaTypeDockerSchema1,
}

// ManifestMediaTypes returns the manifest media types ParseManifest knows,
// preferred first (suitable for an Accept header).
func ManifestMediaTypes() []string { return append([]string(nil), manifestMediaTypes...) }

// IsManifestMediaType reports whether mt (parameters ignored) is a manifest
// or index media type that ParseManifest knows.
func IsManifestMediaType(mt string) bool {
	mt = BaseMediaType(mt)
	for _, m := range manifestMediaTypes {
		if m == mt {
			return true
		}
	}
	return false
}

// IsIndexMediaType reports whether mt (parameters ignored) is an OCI index
// or a Docker manifest list: a manifest whose references are manifests.
func IsIndexMediaType(mt string) bool {
	mt = BaseMediaType(mt)
	return mt == MediaTypeOCIIndex || mt == MediaTypeDockerList
}

// ManifestRefs is what a manifest references, as ParseManifest found it.
//
// Blobs and Children hold each digest at most once, in the order of first
// appearance in the manifest.
type ManifestRefs struct {
	// MediaType is the manifest's media type, after detection.
	MediaType string
	// Blobs are the config and the layers (image manifests), or the blobs
	// (artifact manifests), in order.
	Blobs []Descriptor
	// Children are the entries of an index or manifest list.
	Children []Descriptor
	// Subject is the manifest this one refers to (OCI referrers), if any.
	Subject *Descriptor
	// ArtifactType follows the OCI referrers rule: the manifest's
	// artifactType, else (image manifests only) its config's media type.
	ArtifactType string
}

// genericMediaTypes are Content-Type values that say nothing about the
// manifest format; ParseManifest then detects it from the body.
var genericMediaTypes = map[string]bool{
	"":                         true,
	"application/json":         true,
	"application/octet-stream": true,
	"text/plain":               true,
	"*/*":                      true,
}

// IsGenericMediaType reports whether mt (a base media type, see
// BaseMediaType) says nothing about the manifest format: "", JSON, text,
// octet-stream or */*.
func IsGenericMediaType(mt string) bool { return genericMediaTypes[mt] }

// BaseMediaType returns the media type of a Content-Type value without its
// parameters, lower-cased ("" for an empty value).
func BaseMediaType(mt string) string {
	mt = strings.TrimSpace(mt)
	if mt == "" {
		return ""
	}
	if parsed, _, err := mime.ParseMediaType(mt); err == nil {
		return parsed
	}
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	return strings.ToLower(strings.TrimSpace(mt))
}

// wireManifest is the union of the manifest formats' fields ParseManifest
// reads. Image-spec types are used where the formats agree with them.
type wireManifest struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *v1.Descriptor    `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Blobs         []v1.Descriptor   `json:"blobs"`
	Subject       *v1.Descriptor    `json:"subject"`
	FSLayers      []schema1Layer    `json:"fsLayers"`
	Signatures    []json.RawMessage `json:"signatures"`
}

type schema1Layer struct {
	BlobSum digest.Digest `json:"blobSum"`
}

// ParseManifest parses a manifest body served with mediaType and returns
// what it references.
//
// A mediaType that is empty or generic (application/json,
// application/octet-stream, text/plain) is replaced by the body's own
// mediaType field, or, when that is absent, detected from its shape
// (schemaVersion 1 is Docker schema1; "manifests" is an OCI index; "config"
// is an OCI image manifest). A known mediaType that the body's mediaType
// field contradicts is refused. Unknown media types give
// ErrUnknownMediaType, bodies over MaxManifestSize ErrManifestTooLarge, and
// anything else wrong ErrMalformedManifest. Every digest is checked with
// ValidateDigest.
func ParseManifest(mediaType string, b []byte) (ManifestRefs, error) {
	if len(b) > MaxManifestSize {
		return ManifestRefs{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrManifestTooLarge, len(b), MaxManifestSize)
	}
	var w wireManifest
	if err := json.Unmarshal(b, &w); err != nil {
		return ManifestRefs{}, fmt.Errorf("%w: %w", ErrMalformedManifest, err)
	}
	mt := BaseMediaType(mediaType)
	bodyMT := BaseMediaType(w.MediaType)
	if genericMediaTypes[mt] {
		mt = detectMediaType(&w, bodyMT)
		if mt == "" {
			return ManifestRefs{}, fmt.Errorf("%w: cannot detect the format of a manifest served as %q", ErrUnknownMediaType, clip(mediaType))
		}
	}
	if !IsManifestMediaType(mt) {
		return ManifestRefs{}, fmt.Errorf("%w: %q", ErrUnknownMediaType, clip(mt))
	}
	if bodyMT != "" && bodyMT != mt {
		return ManifestRefs{}, fmt.Errorf("%w: served as %q but its mediaType field says %q", ErrMalformedManifest, clip(mt), clip(bodyMT))
	}

	r := ManifestRefs{MediaType: mt}
	var err error
	switch mt {
	case MediaTypeOCIManifest, MediaTypeDockerManifest:
		if err = wantSchemaVersion(&w, 2); err != nil {
			break
		}
		if w.Config == nil {
			err = malformedManifest("config", "required")
			break
		}
		var cfg Descriptor
		if cfg, err = manifestDescriptor("config", *w.Config); err != nil {
			break
		}
		set := newDescriptorSet(1 + len(w.Layers))
		r.Blobs = set.add(nil, cfg)
		if r.Blobs, err = set.appendAll(r.Blobs, "layers", w.Layers); err != nil {
			break
		}
		r.ArtifactType = w.ArtifactType
		if r.ArtifactType == "" && mt == MediaTypeOCIManifest {
			r.ArtifactType = w.Config.MediaType
		}
	case MediaTypeOCIIndex, MediaTypeDockerList:
		if err = wantSchemaVersion(&w, 2); err != nil {
			break
		}
		r.Children, err = newDescriptorSet(len(w.Manifests)).appendAll(nil, "manifests", w.Manifests)
		// An index may list blobs (BuildKit's cache export, accepted by a
		// registry that does not check index entries): they are held as
		// layer links, as an image's layers are.
		r.Blobs, r.Children = splitIndexEntries(r.Children)
		r.ArtifactType = w.ArtifactType
	case MediaTypeOCIArtifact:
		r.Blobs, err = newDescriptorSet(len(w.Blobs)).appendAll(nil, "blobs", w.Blobs)
		r.ArtifactType = w.ArtifactType
	case MediaTypeDockerSchema1, MediaTypeDockerSchema1JWS:
		if err = wantSchemaVersion(&w, 1); err != nil {
			break
		}
		seen := make(map[digest.Digest]bool, len(w.FSLayers))
		for i, l := range w.FSLayers {
			if verr := ValidateDigest(l.BlobSum); verr != nil {
				err = malformedManifest(fmt.Sprintf("fsLayers[%d].blobSum", i), verr.Error())
				break
			}
			if !seen[l.BlobSum] {
				seen[l.BlobSum] = true
				r.Blobs = append(r.Blobs, Descriptor{MediaType: mediaTypeSchema1Layer, Digest: l.BlobSum})
			}
		}
	}
	if err != nil {
		return ManifestRefs{}, err
	}
	if w.Subject != nil {
		switch mt {
		case MediaTypeOCIManifest, MediaTypeOCIIndex, MediaTypeOCIArtifact:
			s, serr := manifestDescriptor("subject", *w.Subject)
			if serr != nil {
				return ManifestRefs{}, serr
			}
			r.Subject = &s
		}
	}
	return r, nil
}

// detectMediaType names the format of a manifest whose Content-Type said nothing.
func detectMediaType(w *wireManifest, bodyMT string) string {
	if bodyMT != "" {
		return bodyMT
	}
	if w.SchemaVersion == nil {
		return ""
	}
	switch {
	case *w.SchemaVersion == 1 && len(w.Signatures) > 0:
		return MediaTypeDockerSchema1JWS
	case *w.SchemaVersion == 1:
		return MediaTypeDockerSchema1
	case *w.SchemaVersion == 2 && w.Manifests != nil:
		return MediaTypeOCIIndex
	case *w.SchemaVersion == 2 && w.Config != nil:
		return MediaTypeOCIManifest
	}
	return ""
}

func wantSchemaVersion(w *wireManifest, v int) error {
	if w.SchemaVersion == nil {
		return malformedManifest("schemaVersion", "required")
	}
	if *w.SchemaVersion != v {
		return malformedManifest("schemaVersion", fmt.Sprintf("is %d, want %d", *w.SchemaVersion, v))
	}
	return nil
}

func malformedManifest(field, reason string) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformedManifest, field, reason)
}

func manifestDescriptor(field string, d v1.Descriptor) (Descriptor, error) {
	if err := ValidateDigest(d.Digest); err != nil {
		return Descriptor{}, malformedManifest(field+".digest", err.Error())
	}
	if d.Size < 0 {
		return Descriptor{}, malformedManifest(field+".size", fmt.Sprintf("negative size %d", d.Size))
	}
	return Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}, nil
}

// descriptorSet keeps descriptor lists free of repeated digests.
type descriptorSet map[digest.Digest]struct{}

func newDescriptorSet(n int) descriptorSet { return make(descriptorSet, n) }

// add appends d to out unless its digest is already in the set.
func (s descriptorSet) add(out []Descriptor, d Descriptor) []Descriptor {
	if _, ok := s[d.Digest]; ok {
		return out
	}
	s[d.Digest] = struct{}{}
	return append(out, d)
}

// appendAll validates ds and adds each to out.
func (s descriptorSet) appendAll(out []Descriptor, field string, ds []v1.Descriptor) ([]Descriptor, error) {
	for i, d := range ds {
		c, err := manifestDescriptor(fmt.Sprintf("%s[%d]", field, i), d)
		if err != nil {
			return nil, err
		}
		out = s.add(out, c)
	}
	return out, nil
}

// splitIndexEntries separates an index's entries into blobs (a media type
// that is not a manifest's) and child manifests (the rest, an entry
// without a media type included).
func splitIndexEntries(entries []Descriptor) (blobs, children []Descriptor) {
	for _, d := range entries {
		if d.MediaType != "" && !IsManifestMediaType(BaseMediaType(d.MediaType)) {
			blobs = append(blobs, d)
		} else {
			children = append(children, d)
		}
	}
	return blobs, children
}

// SplitReferences sorts a manifest's references, as a registry notification
// lists them, into blobs (config and layers, and an index's entries that are
// blobs) and children (anything with a manifest media type, and an index's
// entries without one).
func SplitReferences(parentMT string, refs []v1.Descriptor) (blobs, children []Descriptor) {
	index := IsIndexMediaType(parentMT)
	bs, cs := newDescriptorSet(len(refs)), newDescriptorSet(0)
	for _, r := range refs {
		d := Descriptor{MediaType: r.MediaType, Digest: r.Digest, Size: r.Size}
		if IsManifestMediaType(BaseMediaType(r.MediaType)) || (index && r.MediaType == "") {
			children = cs.add(children, d)
		} else {
			blobs = bs.add(blobs, d)
		}
	}
	return blobs, children
}
