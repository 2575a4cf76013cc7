package collector

import (
	"context"
	"errors"
	"io/fs"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// TagIndexReader is what the storage check reads of a repository's tags
// when the storage offers it (store.Driver does): the tags with their
// history indexes, listed without reading a link, and one tag's current
// link. Without it the check reads every tag's current link.
type TagIndexReader interface {
	// TagIndex calls fn for every tag of repo with whether it has a
	// current link and the digests of its history index.
	TagIndex(ctx context.Context, repo string, fn func(tag string, current bool, history []digest.Digest) error) error
	// TagCurrent reads a tag's current link; an error matching
	// fs.ErrNotExist when it has none.
	TagCurrent(ctx context.Context, repo, tag string) (digest.Digest, error)
}

// refuseTagged refuses every manifest candidate of repo that a tag's
// current link in storage points at. With a TagIndexReader it reads the
// current link only of the tags whose history holds a candidate: the
// registry writes a tag's history entry before its current link, so a
// current link points into its tag's history. A tag without history
// (written by something else) is read too. The cost is then one listing
// of the repository's tags (a thousand keys a request on object stores)
// and a read per tag that ever pointed at a candidate, instead of a read
// per tag.
func (c *Collector) refuseTagged(ctx context.Context, repo string, want map[events.NodeRef]bool,
	refuse func(n events.NodeRef, reason, detail string)) error {
	ix, ok := c.cfg.Reader.(TagIndexReader)
	if !ok {
		err := c.cfg.Reader.Tags(ctx, repo, func(tag string, cur digest.Digest) error {
			refuse(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: cur}, RefuseTagged, "tag "+tag)
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	var read []string
	err := ix.TagIndex(ctx, repo, func(tag string, current bool, history []digest.Digest) error {
		if !current {
			return nil
		}
		if len(history) == 0 || slices.ContainsFunc(history, func(d digest.Digest) bool {
			return want[events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}]
		}) {
			read = append(read, tag)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, tag := range read {
		cur, err := ix.TagCurrent(ctx, repo, tag)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // deleted since the listing
		case err != nil:
			return err
		}
		refuse(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: cur}, RefuseTagged, "tag "+tag)
	}
	return nil
}
