package collector

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/store"
)

// Restored says what Restore brought back.
type Restored struct {
	Manifest events.NodeRef `json:"manifest"`
	Layers   int            `json:"layers"`
	Tags     []string       `json:"tags,omitempty"`
}

// Restore re-creates the links of an unlinked, not yet purged manifest
// revision: its layer links, its revision link, and the tags that were
// deleted while pointing at it and have not been set since. Its counts
// come back through events published to the log.
func (c *Collector) Restore(ctx context.Context, repo string, d digest.Digest) (Restored, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	m := entry.Manifest
	need := []digest.Digest{d}
	for _, b := range m.Blobs {
		need = append(need, b.Digest)
	}
	for _, x := range need {
		if _, err := c.cfg.Storage.StatBlob(ctx, x); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return Restored{}, fmt.Errorf("%w: %s", ErrDataGone, x)
			}
			return Restored{}, err
		}
	}
	for _, b := range m.Blobs {
		if err := c.cfg.Storage.LinkLayer(ctx, repo, b.Digest); err != nil {
			return Restored{}, err
		}
	}
	if err := c.cfg.Storage.LinkRevision(ctx, repo, d); err != nil {
		return Restored{}, err
	}
	out := Restored{Manifest: ref, Layers: len(m.Blobs)}
	now := c.cfg.Now().UTC()
	id := "restore-" + newID()
	m.Repo, m.Digest, m.Tag = repo, d, ""
	evs := []events.Event{{V: events.Version, ID: id, Time: now, Source: c.cfg.Source, Kind: events.ManifestPushed, Manifest: &m}}
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
