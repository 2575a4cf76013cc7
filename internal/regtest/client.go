package regtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// LayerSize is the size in bytes of the random layers the helpers make.
const LayerSize = 512

// Ref parses "repo:tag", "repo@sha256:..." or "repo" (tag latest) on this registry.
func (r *Registry) Ref(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+s, name.Insecure, name.StrictValidation)
	if err != nil {
		t.Fatalf("regtest: reference %q: %v", s, err)
	}
	return ref
}

// Repo parses a repository name on this registry.
func (r *Registry) Repo(t testing.TB, repo string) name.Repository {
	t.Helper()
	rp, err := name.NewRepository(r.Host+"/"+repo, name.Insecure, name.StrictValidation)
	if err != nil {
		t.Fatalf("regtest: repository %q: %v", repo, err)
	}
	return rp
}

// RandomImage returns a Docker schema 2 image with n random layers.
func RandomImage(t testing.TB, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(LayerSize, int64(layers))
	if err != nil {
		t.Fatalf("regtest: random image: %v", err)
	}
	return img
}

// OCI returns img with OCI manifest and config media types.
func OCI(img v1.Image) v1.Image {
	return mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
}

// SharingImage returns an image made of the first shared layers of base
// followed by extra new random layers (with a new config).
func SharingImage(t testing.TB, base v1.Image, shared, extra int) v1.Image {
	t.Helper()
	ls, err := base.Layers()
	if err != nil {
		t.Fatalf("regtest: layers: %v", err)
	}
	if shared > len(ls) {
		t.Fatalf("regtest: base has %d layers, want %d shared", len(ls), shared)
	}
	layers := append([]v1.Layer(nil), ls[:shared]...)
	for range extra {
		l, err := random.Layer(LayerSize, types.DockerLayer)
		if err != nil {
			t.Fatalf("regtest: random layer: %v", err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatalf("regtest: append layers: %v", err)
	}
	return img
}

// Digest returns the image's manifest digest.
func Digest(t testing.TB, img interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatalf("regtest: digest: %v", err)
	}
	return h
}

// BlobDigests returns the config and layer digests of img.
func BlobDigests(t testing.TB, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatalf("regtest: manifest: %v", err)
	}
	out := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// Push writes img (blobs and manifest) at ref: "repo:tag" or "repo@digest".
func (r *Registry) Push(t testing.TB, ref string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(r.Ref(t, ref), img, transport); err != nil {
		t.Fatalf("regtest: push %s: %v", ref, err)
	}
	return Digest(t, img)
}

// PushRandom pushes a new random image with n layers to "repo:tag".
func (r *Registry) PushRandom(t testing.TB, repoTag string, layers int) v1.Image {
	t.Helper()
	img := RandomImage(t, layers)
	r.Push(t, repoTag, img)
	return img
}

// PushByDigest pushes img to repo by digest, with no tag.
func (r *Registry) PushByDigest(t testing.TB, repo string, img v1.Image) v1.Hash {
	t.Helper()
	d := Digest(t, img)
	return r.Push(t, repo+"@"+d.String(), img)
}

// PushIndex pushes every child to repo by digest, then an OCI index of
// them at "repo:tag" (or by digest if tag is empty). It returns the index.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, children ...v1.Image) v1.ImageIndex {
	t.Helper()
	adds := make([]mutate.IndexAddendum, 0, len(children))
	for i, c := range children {
		r.PushByDigest(t, repo, c)
		adds = append(adds, mutate.IndexAddendum{Add: c, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: fmt.Sprintf("arch%d", i)},
		}})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	ref := repo + ":" + tag
	if tag == "" {
		ref = repo + "@" + Digest(t, idx).String()
	}
	if err := remote.Put(r.Ref(t, ref), idx); err != nil {
		t.Fatalf("regtest: put index %s: %v", ref, err)
	}
	return idx
}

// Artifact is a referrer pushed by PushReferrer.
type Artifact struct {
	Digest   v1.Hash
	Manifest []byte
	Config   v1.Hash // the OCI empty descriptor's blob
	Layer    v1.Hash // one random blob
}

// PushReferrer pushes, by digest into repo, an OCI artifact manifest whose
// subject is the manifest subject (of that repo), with the empty config and
// one random layer. The manifest goes in with a plain PUT, as the registry
// has no referrers API and a client library would add a fallback tag.
func (r *Registry) PushReferrer(t testing.TB, repo string, subject v1.Descriptor, artifactType string) Artifact {
	t.Helper()
	cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	layer, err := random.Layer(LayerSize, "application/octet-stream")
	if err != nil {
		t.Fatalf("regtest: random layer: %v", err)
	}
	rp := r.Repo(t, repo)
	for _, l := range []v1.Layer{cfg, layer} {
		if err := remote.WriteLayer(rp, l, transport); err != nil {
			t.Fatalf("regtest: write blob: %v", err)
		}
	}
	desc := func(l v1.Layer) map[string]any {
		d, _ := l.Digest()
		s, _ := l.Size()
		mt, _ := l.MediaType()
		return map[string]any{"mediaType": string(mt), "digest": d.String(), "size": s}
	}
	sub := map[string]any{"mediaType": string(subject.MediaType), "digest": subject.Digest.String(), "size": subject.Size}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     string(types.OCIManifestSchema1),
		"artifactType":  artifactType,
		"config":        desc(cfg),
		"layers":        []any{desc(layer)},
		"subject":       sub,
	})
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	sum := sha256.Sum256(body)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	resp := r.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+d.String(), string(types.OCIManifestSchema1), body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("regtest: put referrer: status %d", resp.StatusCode)
	}
	cd, _ := cfg.Digest()
	ld, _ := layer.Digest()
	return Artifact{Digest: d, Manifest: body, Config: cd, Layer: ld}
}

// Describe returns the descriptor of a pushed image or index (for a subject).
func Describe(t testing.TB, m interface {
	Digest() (v1.Hash, error)
	Size() (int64, error)
	MediaType() (types.MediaType, error)
}) v1.Descriptor {
	t.Helper()
	d, err := m.Digest()
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	s, err := m.Size()
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	mt, err := m.MediaType()
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	return v1.Descriptor{Digest: d, Size: s, MediaType: mt}
}

// Mount copies the image at from ("repo:tag" or "repo@digest") to to,
// mounting its blobs across repositories instead of uploading them.
func (r *Registry) Mount(t testing.TB, from, to string) v1.Hash {
	t.Helper()
	img, err := remote.Image(r.Ref(t, from), transport)
	if err != nil {
		t.Fatalf("regtest: get %s: %v", from, err)
	}
	// Layers of a remote image are remote.MountableLayers: remote.Write
	// mounts them from their repository.
	if err := remote.Write(r.Ref(t, to), img, transport); err != nil {
		t.Fatalf("regtest: mount %s to %s: %v", from, to, err)
	}
	return Digest(t, img)
}

// DeleteTag deletes repo:tag through the API.
func (r *Registry) DeleteTag(t testing.TB, repo, tag string) {
	t.Helper()
	if err := remote.Delete(r.Ref(t, repo+":"+tag), transport); err != nil {
		t.Fatalf("regtest: delete %s:%s: %v", repo, tag, err)
	}
}

// DeleteManifest deletes repo@d through the API.
func (r *Registry) DeleteManifest(t testing.TB, repo string, d v1.Hash) {
	t.Helper()
	if err := remote.Delete(r.Ref(t, repo+"@"+d.String()), transport); err != nil {
		t.Fatalf("regtest: delete %s@%s: %v", repo, d, err)
	}
}

// DeleteBlob unlinks a blob from repo through the API.
func (r *Registry) DeleteBlob(t testing.TB, repo string, d v1.Hash) {
	t.Helper()
	resp := r.do(t, http.MethodDelete, "/v2/"+repo+"/blobs/"+d.String(), "", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("regtest: delete blob %s@%s: status %d", repo, d, resp.StatusCode)
	}
}

// ManifestStatus is the status of a GET of repo's manifest ref (tag or digest).
func (r *Registry) ManifestStatus(t testing.TB, repo, ref string) int {
	t.Helper()
	return r.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, "", nil).StatusCode
}

// BlobStatus is the status of a GET of repo's blob d.
func (r *Registry) BlobStatus(t testing.TB, repo string, d v1.Hash) int {
	t.Helper()
	return r.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), "", nil).StatusCode
}

var acceptManifests = []string{
	string(types.OCIImageIndex), string(types.OCIManifestSchema1),
	string(types.DockerManifestList), string(types.DockerManifestSchema2),
	string(types.DockerManifestSchema1Signed), string(types.DockerManifestSchema1),
}

// do sends one request and reads its body entirely.
// client and transport make the requests of this package, on a transport
// of their own: httptest.Server.Close closes http.DefaultTransport's idle
// connections, and would break a request under way in another test's
// server shutdown.
var (
	ownTransport = http.DefaultTransport.(*http.Transport).Clone()
	client       = &http.Client{Transport: ownTransport}
	transport    = remote.WithTransport(ownTransport)
)

func (r *Registry) do(t testing.TB, method, path, contentType string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, r.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for _, a := range acceptManifests {
		req.Header.Add("Accept", a)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("regtest: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp
}

// Pull fetches ref ("repo:tag" or "repo@digest") fully and fails the test
// on any error.
func (r *Registry) Pull(t testing.TB, ref string) {
	t.Helper()
	if err := r.TryPull(t, ref); err != nil {
		t.Fatalf("regtest: pull %s: %v", ref, err)
	}
}

// TryPull fetches ref fully: the manifest and, for an index, every child;
// for an image, its config and every layer, each checked against its
// digest. It returns the first error.
func (r *Registry) TryPull(t testing.TB, ref string) error {
	t.Helper()
	nref := r.Ref(t, ref)
	desc, err := remote.Get(nref, transport)
	if err != nil {
		return err
	}
	if err := checkDigest(desc.Manifest, desc.Digest); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		repo := nref.Context().RepositoryStr()
		for _, c := range im.Manifests {
			if err := r.TryPull(t, repo+"@"+c.Digest.String()); err != nil {
				return fmt.Errorf("child %s: %w", c.Digest, err)
			}
		}
		return nil
	}
	img, err := desc.Image()
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := checkDigest(cfg, m.Config.Digest); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for _, ld := range m.Layers {
		l, err := img.LayerByDigest(ld.Digest)
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", ld.Digest, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", ld.Digest, err)
		}
		if err := checkDigest(b, ld.Digest); err != nil {
			return fmt.Errorf("layer: %w", err)
		}
	}
	return nil
}

func checkDigest(b []byte, want v1.Hash) error {
	got, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("content has digest %s, want %s", got, want)
	}
	return nil
}

// MustPull reports an error unless ref pulls completely.
func (r *Registry) MustPull(t testing.TB, ref string) {
	t.Helper()
	if err := r.TryPull(t, ref); err != nil {
		t.Errorf("pull %s: %v", ref, err)
	}
}

// MustNotFind reports an error unless the manifest answers 404.
func (r *Registry) MustNotFind(t testing.TB, repo, ref string) {
	t.Helper()
	if code := r.ManifestStatus(t, repo, ref); code != http.StatusNotFound {
		t.Errorf("%s:%s answers %d, want 404", repo, ref, code)
	}
}
