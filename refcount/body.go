package refcount

// A manifest's body (<manifest key> 0x01 'j') is what the revision
// references, kept for the trash and Restore: its events.Manifest, less
// what the key already says (the repository and the digest) and the tag of
// the push with its expiry (Restore and the reconciler's heal publish the
// body as a push again, and an expiry without its tag is no valid push).
// From schema 6 it is written in binary:
//
//	bodyBinary flags mediaType size(varint) legacy(string)
//	  blobs(list) children(list) [subject(descriptor), when flags&bodySubject]
//	list       = count(uvarint) descriptor...
//	descriptor = digest(as in keys) size(varint) mediaType
//	mediaType  = 0 (none) | a code of knownMediaTypes | mediaTypeText string
//	string     = length(uvarint) bytes
//
// Before, it was JSON: a body whose first byte is '{' is read as JSON (its
// tag expiry, which schema 5 kept, dropped), so a file of schema 5 needs
// no rewrite.
//
// Why binary: the JSON of a single-platform image was about 560 bytes, a
// digest as 71 characters of text and every media type spelt out, twice
// the revision's own record; written beside the record at every push, the
// bodies filled a repository's leaves and made them split. Replaying the
// same batches into bare bbolt without the bodies ran 1.5 to 2 times as
// fast (docs/bench/limits.md). The binary body of the same image is about
// 160 bytes.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/refgc/refgc/events"
)

const (
	bodyBinary byte = 1 // the first byte of a binary body ('{' begins a JSON one)

	bodyUnverified byte = 1 << 0
	bodySubject    byte = 1 << 1

	mediaTypeText byte = 0xFF // a media type not in knownMediaTypes follows as a string
)

// knownMediaTypes are the media types a body stores as one byte: the
// index is the code. Append only: a code, once written, names its type
// for good.
var knownMediaTypes = [...]string{
	1:  v1.MediaTypeImageManifest,
	2:  v1.MediaTypeImageIndex,
	3:  v1.MediaTypeImageConfig,
	4:  v1.MediaTypeImageLayerGzip,
	5:  v1.MediaTypeImageLayer,
	6:  v1.MediaTypeImageLayerZstd,
	7:  v1.MediaTypeEmptyJSON,
	8:  "application/vnd.docker.distribution.manifest.v2+json",
	9:  "application/vnd.docker.distribution.manifest.list.v2+json",
	10: "application/vnd.docker.container.image.v1+json",
	11: "application/vnd.docker.image.rootfs.diff.tar.gzip",
	12: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
	13: "application/vnd.docker.distribution.manifest.v1+prettyjws",
	14: "application/vnd.docker.distribution.manifest.v1+json",
	15: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
	16: "application/vnd.in-toto+json",
	17: "application/vnd.dev.cosign.simplesigning.v1+json",
}

var mediaTypeCodes = func() map[string]byte {
	m := make(map[string]byte, len(knownMediaTypes))
	for code, mt := range knownMediaTypes {
		if code > 0 {
			m[mt] = byte(code)
		}
	}
	return m
}()

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendMediaType(b []byte, mt string) []byte {
	if mt == "" {
		return append(b, 0)
	}
	if code, ok := mediaTypeCodes[mt]; ok {
		return append(b, code)
	}
	return appendString(append(b, mediaTypeText), mt)
}

func appendDescriptor(b []byte, d events.Descriptor) []byte {
	b = appendDigest(b, d.Digest)
	b = binary.AppendVarint(b, d.Size)
	return appendMediaType(b, d.MediaType)
}

// encodeBody is the body of m (its repository, digest, tag and tag expiry
// left out).
func encodeBody(m *events.Manifest) []byte {
	b := make([]byte, 0, 16+len(m.Legacy)+(len(m.Blobs)+len(m.Children)+1)*(2+48))
	var flags byte
	if m.Unverified {
		flags |= bodyUnverified
	}
	if m.Subject != nil {
		flags |= bodySubject
	}
	b = append(b, bodyBinary, flags)
	b = appendMediaType(b, m.MediaType)
	b = binary.AppendVarint(b, m.Size)
	b = appendString(b, m.Legacy)
	b = appendList(b, m.Blobs, appendDescriptor)
	b = appendList(b, m.Children, appendDescriptor)
	if m.Subject != nil {
		b = appendDescriptor(b, *m.Subject)
	}
	return b
}

func (d *decoder) mediaType() string {
	switch code := d.byte1(); {
	case d.err != nil || code == 0:
		return ""
	case code == mediaTypeText:
		return string(d.bytes())
	case int(code) < len(knownMediaTypes):
		return knownMediaTypes[code]
	default:
		d.fail()
		return ""
	}
}

func (d *decoder) descriptor() events.Descriptor {
	var desc events.Descriptor
	n := digestLen(d.b)
	if d.err != nil || n < 0 {
		d.fail()
		return desc
	}
	dg, err := decodeDigest(d.b[:n])
	if err != nil {
		d.fail()
		return desc
	}
	d.b = d.b[n:]
	desc.Digest = dg
	desc.Size = d.varint()
	desc.MediaType = d.mediaType()
	return desc
}

// decodeBody reads the body of the manifest whose node key is k, binary
// or JSON.
func decodeBody(k, raw []byte) (events.Manifest, error) {
	var m events.Manifest
	if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &m); err != nil {
			return m, fmt.Errorf("%w: manifest body: %v", ErrCorrupt, err)
		}
		m.Tag, m.TagExpires = "", time.Time{}
		return m, nil
	}
	ref, err := parseNodeKey(k)
	if err != nil {
		return m, err
	}
	m.Repo, m.Digest = ref.Repo, ref.Digest
	d := &decoder{b: raw}
	if d.byte1() != bodyBinary {
		d.fail()
	}
	flags := d.byte1()
	m.MediaType = d.mediaType()
	m.Size = d.varint()
	m.Legacy = string(d.bytes())
	m.Blobs = decodeList(d, d.descriptor)
	m.Children = decodeList(d, d.descriptor)
	if flags&bodySubject != 0 {
		s := d.descriptor()
		m.Subject = &s
	}
	m.Unverified = flags&bodyUnverified != 0
	if d.err == nil && (len(d.b) > 0 || flags&^(bodyUnverified|bodySubject) != 0) {
		d.fail()
	}
	if d.err != nil {
		return events.Manifest{}, fmt.Errorf("%w: manifest body of %q", ErrCorrupt, k)
	}
	return m, nil
}
