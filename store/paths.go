package store

import (
	"fmt"
	"path"
	"strings"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// Root is the layout root inside a driver, as in Distribution v3.1.2
// (registry/storage/paths.go: "/docker/registry/" + "v2").
const Root = "/docker/registry/v2"

const (
	reposRoot = Root + "/repositories"
	blobsRoot = Root + "/blobs"

	// linkFile is the file of a link directory (a revision, a layer link,
	// a tag's current or history entry); dataFile a blob directory's.
	linkFile = "link"
	dataFile = "data"
)

// algReplacer is Distribution's blobAlgorithmReplacer: the algorithm part of
// a digest becomes path components this way. It changes nothing for the
// algorithms go-digest registers.
var algReplacer = strings.NewReplacer("+", "/", ".", "/", ";", "/")

func invalid(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrInvalid, what, err)
}

func checkRepo(repo string) error {
	if err := events.ValidateRepo(repo); err != nil {
		return invalid("repository", err)
	}
	return nil
}

func checkTag(tag string) error {
	if err := events.ValidateTag(tag); err != nil {
		return invalid("tag", err)
	}
	return nil
}

func checkDigest(d digest.Digest) error {
	if err := events.ValidateDigest(d); err != nil {
		return invalid("digest", err)
	}
	return nil
}

// safe checks, once more, that a built path is clean, absolute, made of
// driver-legal characters and under Root. Validation makes this always
// true; the check keeps a future mistake from reaching outside the root.
func safe(p string) (string, error) {
	if path.Clean(p) != p || !strings.HasPrefix(p, Root+"/") ||
		!storagedriver.PathRegexp.MatchString(p) {
		return "", fmt.Errorf("%w: unsafe storage path %q", ErrInvalid, p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." || c == "." {
			return "", fmt.Errorf("%w: unsafe storage path %q", ErrInvalid, p)
		}
	}
	return p, nil
}

// digestDir is <alg>/<hex>, or <alg>/<2 hex>/<hex> for the blob store.
func digestDir(d digest.Digest, multilevel bool) string {
	alg := algReplacer.Replace(string(d.Algorithm()))
	hex := d.Encoded()
	if multilevel {
		return alg + "/" + hex[:2] + "/" + hex
	}
	return alg + "/" + hex
}

// repoPath returns repositories/<repo>/<elem...> for a valid repo.
func repoPath(repo string, elem ...string) (string, error) {
	if err := checkRepo(repo); err != nil {
		return "", err
	}
	return safe(path.Join(append([]string{reposRoot, repo}, elem...)...))
}

func tagDir(repo, tag string) (string, error) {
	if err := checkTag(tag); err != nil {
		return "", err
	}
	return repoPath(repo, "_manifests", "tags", tag)
}

func tagCurrentLink(repo, tag string) (string, error) {
	return tagChild(repo, tag, "current/"+linkFile)
}

func tagIndexDir(repo, tag string) (string, error) {
	return tagChild(repo, tag, "index")
}

func tagChild(repo, tag, rel string) (string, error) {
	dir, err := tagDir(repo, tag)
	if err != nil {
		return "", err
	}
	return safe(dir + "/" + rel)
}

func tagIndexEntryDir(repo, tag string, d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return tagChild(repo, tag, "index/"+digestDir(d, false))
}

func revisionsDir(repo string) (string, error) {
	return repoPath(repo, "_manifests", "revisions")
}

func revisionDir(repo string, d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return repoPath(repo, "_manifests", "revisions", digestDir(d, false))
}

func layersDir(repo string) (string, error) {
	return repoPath(repo, "_layers")
}

func layerDir(repo string, d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return repoPath(repo, "_layers", digestDir(d, false))
}

func blobDir(d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return safe(blobsRoot + "/" + digestDir(d, true))
}

func blobDataPath(d digest.Digest) (string, error) {
	dir, err := blobDir(d)
	if err != nil {
		return "", err
	}
	return safe(dir + "/" + dataFile)
}

// digestFromDir parses the <alg>/<hex> tail of a directory path found in
// storage. It returns false for anything that is not a valid digest.
func digestFromDir(algPart, hex string) (digest.Digest, bool) {
	d := digest.Digest(algPart + ":" + hex) // digest.NewDigestFromEncoded, without its fmt.Sprintf
	if events.ValidateDigest(d) != nil {
		return "", false
	}
	return d, true
}
