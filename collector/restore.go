package collector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// Restored says what Restore brought back.
type Restored struct {
	Manifest events.NodeRef `json:"manifest"`
	Layers   int            `json:"layers"`
	// Children counts the child manifests of an index brought back from
	// the trash with it.
	Children int      `json:"children,omitempty"`
	Tags     []string `json:"tags,omitempty"`
}

// Restore re-creates the links of an unlinked, not yet purged manifest
// revision: its layer links, its revision link, the children of an index
// that are in the trash too (with theirs), and the tags that were deleted
// while pointing at it and have not been set since. Its counts come back
// through events published to the log.
func (c *Collector) Restore(ctx context.Context, repo string, d digest.Digest) (Restored, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restore(ctx, repo, d)
}

func (c *Collector) restore(ctx context.Context, repo string, d digest.Digest) (Restored, error) {
	ref := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return Restored{}, err
	}
	entry, ok, err := c.cfg.Projection.TrashEntryOf(ref)
	if err != nil {
		return Restored{}, err
	}
	if !ok {
		return Restored{}, fmt.Errorf("%w: %s", ErrNotInTrash, ref)
	}
	out := Restored{Manifest: ref, Layers: len(entry.Manifest.Blobs)}
	now := c.cfg.Now().UTC()
	id := "restore-" + newID()
	var evs []events.Event
	if err := c.relink(ctx, entry, now, id, &evs, &out); err != nil {
		return out, err
	}
	for _, tag := range entry.Tags {
		if _, exists, err := c.cfg.Projection.Get(events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: tag}); err != nil {
			return out, err
		} else if exists {
			continue // set again since: leave it
		}
		if err := c.cfg.Storage.LinkTag(ctx, repo, tag, d); err != nil {
			return out, err
		}
		out.Tags = append(out.Tags, tag)
		evs = append(evs, events.Event{V: events.Version, ID: id + "-" + tag, Time: now, Source: c.cfg.Source,
			Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: d}})
	}
	if err := c.cfg.Log.Publish(ctx, evs); err != nil {
		return out, err
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return out, err
	}
	c.m.restores.Inc()
	return out, nil
}

// relink puts a trashed manifest back in storage, children in the trash
// first, and appends the events that state it present: an index is only
// whole with its children.
func (c *Collector) relink(ctx context.Context, entry refcount.TrashEntry, now time.Time, id string,
	evs *[]events.Event, out *Restored) error {
	m := entry.Manifest
	repo, d := entry.Node.Repo, entry.Node.Digest
	need := []digest.Digest{d}
	for _, b := range m.Blobs {
		need = append(need, b.Digest)
	}
	for _, x := range need {
		if _, err := c.cfg.Storage.StatBlob(ctx, x); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: %s", ErrDataGone, x)
			}
			return err
		}
	}
	for _, ch := range m.Children {
		child, ok, err := c.cfg.Projection.TrashEntryOf(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: ch.Digest})
		if err != nil {
			return err
		}
		if !ok {
			continue // still linked, or purged: its own restore or heal says which
		}
		if err := c.relink(ctx, child, now, id, evs, out); err != nil {
			return fmt.Errorf("child %s: %w", ch.Digest, err)
		}
		out.Children++
	}
	for _, b := range m.Blobs {
		if err := c.cfg.Storage.LinkLayer(ctx, repo, b.Digest); err != nil {
			return err
		}
	}
	if err := c.cfg.Storage.LinkRevision(ctx, repo, d); err != nil {
		return err
	}
	m.Repo, m.Digest, m.Tag, m.TagExpires = repo, d, "", time.Time{} // (an entry of schema 5 may keep an expiry)
	*evs = append(*evs, events.Event{V: events.Version, ID: id + "-" + d.Encoded()[:16], Time: now, Source: c.cfg.Source,
		Kind: events.ManifestPushed, Manifest: &m})
	return nil
}
