package regtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Set is a set of object keys.
type Set map[string]struct{}

// Add adds k.
func (s Set) Add(k string) { s[k] = struct{}{} }

// Has reports whether k is in s.
func (s Set) Has(k string) bool { _, ok := s[k]; return ok }

// Sorted returns the keys in order.
func (s Set) Sorted() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Len is the number of keys.
func (s Set) Len() int { return len(s) }

// Minus returns the keys of s that are not in o, sorted.
func (s Set) Minus(o Set) []string {
	var out []string
	for k := range s {
		if !o.Has(k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// Sets are the registry objects, by kind. Keys: tags "repo:tag",
// revisions and layer links "repo@<digest>", blobs "<digest>".
type Sets struct {
	Tags      Set
	Revisions Set
	Layers    Set
	Blobs     Set
	// Dangling lists references to objects that are not on disk (a tag to
	// a missing revision, a manifest to a missing layer link or blob). Only
	// Reachable fills it.
	Dangling []string
}

func newSets() Sets {
	return Sets{Tags: Set{}, Revisions: Set{}, Layers: Set{}, Blobs: Set{}}
}

// Minus returns every object of s not in o, each prefixed by its kind
// ("tag ", "revision ", "layer ", "blob "), sorted by kind then key.
func (s Sets) Minus(o Sets) []string {
	var out []string
	add := func(kind string, keys []string) {
		for _, k := range keys {
			out = append(out, kind+" "+k)
		}
	}
	add("tag", s.Tags.Minus(o.Tags))
	add("revision", s.Revisions.Minus(o.Revisions))
	add("layer", s.Layers.Minus(o.Layers))
	add("blob", s.Blobs.Minus(o.Blobs))
	return out
}

// Len is the number of objects in s.
func (s Sets) Len() int { return len(s.Tags) + len(s.Revisions) + len(s.Layers) + len(s.Blobs) }

const v2 = "docker/registry/v2"

// maxManifest bounds the manifest bytes the oracle parses.
const maxManifest = 4 << 20

type layout struct {
	root    string // <root>/docker/registry/v2
	repos   []string
	present Sets
	tagLink map[string]digest.Digest // "repo:tag" -> current
}

// Present returns every tag (with a current link), revision link, layer
// link and blob (with data) under the filesystem storage root.
func Present(root string) (Sets, error) {
	l, err := readLayout(root)
	if err != nil {
		return Sets{}, err
	}
	return l.present, nil
}

func readLayout(root string) (*layout, error) {
	l := &layout{root: filepath.Join(root, filepath.FromSlash(v2)), present: newSets(), tagLink: map[string]digest.Digest{}}
	if err := l.findRepos(filepath.Join(l.root, "repositories"), ""); err != nil {
		return nil, err
	}
	for _, repo := range l.repos {
		if err := l.readRepo(repo); err != nil {
			return nil, err
		}
	}
	blobs := filepath.Join(l.root, "blobs")
	algs, err := readDir(blobs)
	if err != nil {
		return nil, err
	}
	for _, alg := range algs {
		prefixes, err := readDir(filepath.Join(blobs, alg))
		if err != nil {
			return nil, err
		}
		for _, p := range prefixes {
			hexes, err := readDir(filepath.Join(blobs, alg, p))
			if err != nil {
				return nil, err
			}
			for _, h := range hexes {
				if isFile(filepath.Join(blobs, alg, p, h, "data")) {
					l.present.Blobs.Add(alg + ":" + h)
				}
			}
		}
	}
	return l, nil
}

// readDir lists the names in dir; a missing dir is empty.
func readDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("regtest: oracle: %w", err)
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func (l *layout) findRepos(dir, name string) error {
	ents, err := readDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e == "_manifests" && name != "" {
			l.repos = append(l.repos, name)
			continue
		}
		if strings.HasPrefix(e, "_") {
			continue
		}
		if fi, err := os.Stat(filepath.Join(dir, e)); err != nil || !fi.IsDir() {
			continue
		}
		sub := e
		if name != "" {
			sub = name + "/" + e
		}
		if err := l.findRepos(filepath.Join(dir, e), sub); err != nil {
			return err
		}
	}
	return nil
}

func (l *layout) repoDir(repo string) string {
	return filepath.Join(l.root, "repositories", filepath.FromSlash(repo))
}

// linkDirs adds repo@<alg>:<hex> for every <dir>/<alg>/<hex>/link.
func linkDirs(dir, repo string, into Set) error {
	algs, err := readDir(dir)
	if err != nil {
		return err
	}
	for _, alg := range algs {
		hexes, err := readDir(filepath.Join(dir, alg))
		if err != nil {
			return err
		}
		for _, h := range hexes {
			if isFile(filepath.Join(dir, alg, h, "link")) {
				into.Add(repo + "@" + alg + ":" + h)
			}
		}
	}
	return nil
}

func (l *layout) readRepo(repo string) error {
	rd := l.repoDir(repo)
	if err := linkDirs(filepath.Join(rd, "_manifests", "revisions"), repo, l.present.Revisions); err != nil {
		return err
	}
	if err := linkDirs(filepath.Join(rd, "_layers"), repo, l.present.Layers); err != nil {
		return err
	}
	tags, err := readDir(filepath.Join(rd, "_manifests", "tags"))
	if err != nil {
		return err
	}
	for _, tag := range tags {
		b, err := os.ReadFile(filepath.Join(rd, "_manifests", "tags", tag, "current", "link"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("regtest: oracle: %w", err)
		}
		d, err := digest.Parse(string(b))
		if err != nil {
			return fmt.Errorf("regtest: oracle: tag %s:%s: %w", repo, tag, err)
		}
		l.present.Tags.Add(repo + ":" + tag)
		l.tagLink[repo+":"+tag] = d
	}
	return nil
}

func (l *layout) blobData(d digest.Digest) string {
	h := d.Encoded()
	return filepath.Join(l.root, "blobs", string(d.Algorithm()), h[:2], h, "data")
}

// manifest is the union of the fields the oracle follows in docker schema
// 1 and 2, OCI manifests and indexes, and manifest lists.
type manifest struct {
	MediaType string `json:"mediaType"`
	Config    *struct {
		Digest digest.Digest `json:"digest"`
	} `json:"config"`
	Layers []struct {
		Digest digest.Digest `json:"digest"`
		URLs   []string      `json:"urls"`
	} `json:"layers"`
	Manifests []struct {
		MediaType string        `json:"mediaType"`
		Digest    digest.Digest `json:"digest"`
	} `json:"manifests"`
	FSLayers []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers"`
	Subject *struct {
		Digest digest.Digest `json:"digest"`
	} `json:"subject"`
}

func (l *layout) readManifest(d digest.Digest) (*manifest, error) {
	p := l.blobData(d)
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxManifest {
		return nil, fmt.Errorf("manifest %s: %d bytes", d, fi.Size())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d, err)
	}
	return &m, nil
}

type marker struct {
	l         *layout
	out       Sets
	referrers map[string][]digest.Digest // "repo@subject" -> referrer revisions
	seen      Set                        // "repo@digest" manifests followed
	err       error
}

// Reachable computes what a correct collector must keep under the
// filesystem storage root. Roots: every tag's current link and, when
// keepUntagged, every revision link. From a manifest it follows: its
// revision link and content blob; an index's (or manifest list's)
// children; an image's config and layers (the layer links in the same
// repository and the blobs); schema 1 fsLayers; and its referrers (a
// revision of the same repository whose subject it is). Only objects on
// disk are included; references to missing ones go to Dangling. Foreign
// layers (with urls) that are not stored are not dangling.
func Reachable(root string, keepUntagged bool) (Sets, error) {
	l, err := readLayout(root)
	if err != nil {
		return Sets{}, err
	}
	m := &marker{l: l, out: newSets(), referrers: map[string][]digest.Digest{}, seen: Set{}}
	// Index referrers by subject: every revision's manifest is read once.
	for _, rev := range l.present.Revisions.Sorted() {
		repo, ds, _ := strings.Cut(rev, "@")
		d, err := digest.Parse(ds)
		if err != nil {
			continue
		}
		man, err := l.readManifest(d)
		if err != nil || man.Subject == nil {
			continue
		}
		k := repo + "@" + man.Subject.Digest.String()
		m.referrers[k] = append(m.referrers[k], d)
	}
	for _, tag := range l.present.Tags.Sorted() {
		repo, _, _ := strings.Cut(tag, ":")
		m.out.Tags.Add(tag)
		m.follow(repo, l.tagLink[tag], "tag "+tag)
	}
	if keepUntagged {
		for _, rev := range l.present.Revisions.Sorted() {
			repo, ds, _ := strings.Cut(rev, "@")
			m.follow(repo, digest.Digest(ds), "untagged")
		}
	}
	if m.err != nil {
		return Sets{}, m.err
	}
	slices.Sort(m.out.Dangling)
	return m.out, nil
}

// manifestMediaTypes are the media types an index entry has when it names
// a manifest; any other names a blob.
var manifestMediaTypes = map[string]bool{
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
}

func (m *marker) dangling(from, what string) {
	m.out.Dangling = append(m.out.Dangling, from+" -> "+what)
}

func (m *marker) blob(d digest.Digest, from string) {
	if m.l.present.Blobs.Has(d.String()) {
		m.out.Blobs.Add(d.String())
	} else {
		m.dangling(from, "blob "+d.String())
	}
}

func (m *marker) layer(repo string, d digest.Digest, foreign bool, from string) {
	k := repo + "@" + d.String()
	if m.l.present.Layers.Has(k) {
		m.out.Layers.Add(k)
	} else if !foreign {
		m.dangling(from, "layer "+k)
	}
	if m.l.present.Blobs.Has(d.String()) {
		m.out.Blobs.Add(d.String())
	} else if !foreign {
		m.dangling(from, "blob "+d.String())
	}
}

func (m *marker) follow(repo string, d digest.Digest, from string) {
	k := repo + "@" + d.String()
	if m.seen.Has(k) || m.err != nil {
		return
	}
	m.seen.Add(k)
	if !m.l.present.Revisions.Has(k) {
		m.dangling(from, "revision "+k)
		return
	}
	m.out.Revisions.Add(k)
	m.blob(d, "revision "+k)
	if !m.l.present.Blobs.Has(d.String()) {
		return
	}
	man, err := m.l.readManifest(d)
	if err != nil {
		m.err = fmt.Errorf("regtest: oracle: %s: %w", k, err)
		return
	}
	self := "revision " + k
	for _, c := range man.Manifests {
		if c.MediaType == "" || manifestMediaTypes[c.MediaType] {
			m.follow(repo, c.Digest, self)
		} else {
			m.layer(repo, c.Digest, false, self) // an index of blobs (a build cache)
		}
	}
	if man.Config != nil && man.Config.Digest != "" {
		m.layer(repo, man.Config.Digest, false, self)
	}
	for _, ly := range man.Layers {
		m.layer(repo, ly.Digest, len(ly.URLs) > 0, self)
	}
	for _, f := range man.FSLayers {
		m.layer(repo, f.BlobSum, false, self)
	}
	for _, r := range m.referrers[k] {
		m.follow(repo, r, "subject "+k)
	}
}

// VerifyCollection checks a collection against the oracle: it computes
// what is reachable under root, runs collect, and then requires that every
// reachable object is still present and that nothing else is, except the
// objects named in kept (keys as Sets.Minus gives them, such as
// "layer repo@sha256:…" or "blob sha256:…").
func VerifyCollection(t testing.TB, root string, keepUntagged bool, kept map[string]bool, collect func()) {
	t.Helper()
	before, err := Reachable(root, keepUntagged)
	if err != nil {
		t.Fatal(err)
	}
	collect()
	after, err := Present(root)
	if err != nil {
		t.Fatal(err)
	}
	if lost := before.Minus(after); len(lost) > 0 {
		t.Errorf("reachable objects deleted: %v", lost)
	}
	var left []string
	for _, k := range after.Minus(before) {
		if !kept[k] {
			left = append(left, k)
		}
	}
	if len(left) > 0 {
		t.Errorf("garbage left behind: %v", left)
	}
}

// CollectAndVerify is a collection test's last step: settle (wait until
// every notification sent so far is in the projection), then
// VerifyCollection around drain (passes while the clock moves past grace
// and retention), then the projection's own invariant check.
func CollectAndVerify[M any](t testing.TB, root string, keepUntagged bool, kept map[string]bool, settle, drain func(), check func() ([]M, error)) {
	t.Helper()
	settle()
	VerifyCollection(t, root, keepUntagged, kept, drain)
	if ms, err := check(); err != nil || len(ms) > 0 {
		t.Errorf("projection check: %v %v", ms, err)
	}
}
