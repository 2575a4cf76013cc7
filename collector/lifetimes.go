package collector

// # Tag lifetimes
//
// Before its rounds, a pass acts on the tags whose lifetime needs it
// (refcount.DueTags, judged against the delivery watermark like every
// candidate):
//
//   - A present tag whose expiry has passed is removed: for Distribution,
//     its tag directory is deleted from storage (store.Driver.DeleteTag),
//     after checking that the tag still points where the projection says
//     (a tag moved by a push whose notification is on its way is left
//     alone and counted as refused, reason tag_moved). Expiries from
//     tag.set events are acted on only with Config.ExpireTags (opt-in);
//     a repository purge's always.
//   - A tag in the time machine whose window has ended is forgotten, which
//     releases its manifest: a bookkeeping step, with the event stamped at
//     the window's end so the manifest's grace counts from there.
//
// A tag whose source has a database owner (Config.Owners) is the owner's
// row, not a file: its expiry, or its repository's purge, already ended
// its lifetime in the owner's database, so the collector follows it
// whatever ExpireTags says, with the event stamped at the expiry (the
// window then ends when the owner's does, lifetime_end plus the window),
// and touches no storage. When its window ends, the collector asks the
// owner to delete the row (owners.go), with an intent id derived from the
// tag and its window's end, so every retry, after a timeout or a crash,
// is the same request; the tag is forgotten only on the owner's deleted
// or absent, and an in_use answer's statements (a tag.set: the tag is
// current again in the owner's database) are published as corrections.
// In a repository without a window, an owned tag's expiry or purge is
// where it leaves for good, and asks the owner the same way.
//
// Each is committed by a Collected event naming the tag, re-checked by the
// projection against the cursor the pass read (AsOf): a tag set again in
// the meantime stays, and a tag the collector removed from storage while
// it was being set again is linked back. Tag operations are idempotent,
// so a crash between the storage operation and the event is finished by
// the next pass.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// TagDeleter removes a tag from storage (idempotent). store.Driver
// implements it; the collector uses it for expired and purged tags.
type TagDeleter interface {
	DeleteTag(ctx context.Context, repo, tag string) error
}

// RefuseTagMoved: an expired tag points elsewhere in storage than the
// projection says (a move whose notification is late): it is not removed.
const RefuseTagMoved = "tag_moved"

// ErrNotInTimeMachine is returned by RestoreTag for a tag that is neither
// in the time machine nor deleted with a revision still in the trash.
var ErrNotInTimeMachine = errors.New("collector: tag not in the time machine")

// lifetimes removes the expired tags and forgets those whose time machine
// window ended, batch after batch, until none is due.
func (c *Collector) lifetimes(ctx context.Context, rep *Report, v View) error {
	paused := map[string]bool{}
	for _, p := range v.Paused {
		paused[p.Repo] = true
	}
	skip := map[events.NodeRef]bool{}
	for {
		seq, err := c.cfg.Log.CatchUp(ctx)
		if err != nil {
			return fmt.Errorf("collector: catch up: %w", err)
		}
		// Tags go one at a time against one listing of their
		// repositories: their batches keep the first round's size.
		due, err := c.cfg.Projection.DueTags(v.Bound, min(c.cfg.BatchSize, firstRoundSize)+len(skip))
		if err != nil {
			return err
		}
		var evs []events.Event
		var removed []refcount.TagDue
		var owned []refcount.Intent                      // owned tags leaving for good: asked of their owners
		ownedDue := map[string]refcount.TagDue{}         // by intent id
		current := map[string]map[string]digest.Digest{} // repo → tag → digest, read once per repository
		for _, d := range due {
			if skip[d.Tag] || paused[d.Tag.Repo] {
				continue
			}
			origin, own, err := c.tagOwner(d.Tag)
			if err != nil {
				return err
			}
			if !d.Release && !d.Purge && !c.cfg.ExpireTags && own == nil {
				skip[d.Tag] = true // recorded, not acted on: opt-in
				continue
			}
			skip[d.Tag] = true
			switch {
			case own != nil && (d.Release || c.cfg.Projection.TimeMachineWindow(d.Tag.Repo) == 0):
				// Its window ended, or it expired where there is none:
				// the owner's row is garbage now.
				in := refcount.Intent{ID: tagIntentID(d), Node: d.Tag, Origin: origin}
				ownedDue[in.ID] = d
				owned = append(owned, in)
				continue
			case d.Release:
				evs = append(evs, c.tagEvent(d.Tag, d.At, seq))
				continue
			case own != nil:
				// The owner ended it at its expiry (or purge) itself: into
				// the time machine from then.
				removed = append(removed, d)
				evs = append(evs, c.tagEvent(d.Tag, d.At, seq))
				continue
			}
			moved, err := c.removeTag(ctx, d, current)
			if err != nil {
				c.m.errors.WithLabelValues(string(events.NodeTag)).Inc()
				rep.Errors++
				c.cfg.Logger.Warn("removing an expired tag failed; the next pass retries", "tag", d.Tag.String(), "err", err)
				continue
			}
			if moved {
				rep.Refused++
				c.m.refused.WithLabelValues(RefuseTagMoved).Inc()
				c.cfg.Logger.Warn("an expired tag points elsewhere in storage: left alone", "tag", d.Tag.String())
				continue
			}
			removed = append(removed, d)
			evs = append(evs, c.tagEvent(d.Tag, c.cfg.Now().UTC(), seq))
		}
		var corrections []events.Event
		if len(owned) > 0 {
			var mu sync.Mutex
			var done []refcount.Intent
			done, corrections = c.askOwners(ctx, owned, rep, &mu)
			for _, in := range done {
				d := ownedDue[in.ID]
				if !d.Release {
					removed = append(removed, d)
				}
				evs = append(evs, c.tagEvent(d.Tag, d.At, seq))
			}
		}
		if len(evs) == 0 && len(corrections) == 0 {
			return nil
		}
		if err := c.publishApplied(ctx, evs, "tag lifetimes"); err != nil {
			return err
		}
		c.m.deletions.WithLabelValues(string(events.NodeTag), "release").Add(float64(len(evs) - len(removed)))
		rep.Released += len(evs) - len(removed)
		for _, d := range removed {
			if err := c.settleTag(ctx, d, rep); err != nil {
				return err
			}
		}
		if err := c.publishApplied(ctx, corrections, "owners' statements"); err != nil {
			return err
		}
	}
}

// tagOwner returns the source that stated a tag and its owner, if the
// tag is owned.
func (c *Collector) tagOwner(tag events.NodeRef) (string, Owner, error) {
	if len(c.cfg.Owners) == 0 {
		return "", nil, nil
	}
	ni, ok, err := c.cfg.Projection.Get(tag)
	if err != nil || !ok {
		return "", nil, err
	}
	return ni.Origin, c.ownerOf(ni.Origin, events.NodeTag), nil
}

// tagIntentID is the intent id of asking a tag's owner to delete it when
// its window ends: the same for every retry of that window's end.
func tagIntentID(d refcount.TagDue) string {
	sum := sha256.Sum256([]byte(d.Tag.Repo + "\x00" + d.Tag.Name + "\x00" + d.At.UTC().Format(time.RFC3339Nano)))
	return "tag-" + hex.EncodeToString(sum[:12])
}

// tagEvent is the Collected event of a tag's lifetime step.
func (c *Collector) tagEvent(tag events.NodeRef, at time.Time, seq uint64) events.Event {
	return events.Event{V: events.Version, ID: "tag-" + newID(), Time: at.UTC(), Source: c.cfg.Source,
		Kind: events.Collected, Collected: &events.CollectedRef{Node: tag, AsOf: seq}}
}

// removeTag deletes an expired tag from storage, unless storage has it
// pointing elsewhere (moved). A storage without tags of its own (no
// TagDeleter, or a dry run) has nothing to delete.
func (c *Collector) removeTag(ctx context.Context, d refcount.TagDue, current map[string]map[string]digest.Digest) (moved bool, err error) {
	td, ok := c.cfg.Storage.(TagDeleter)
	if !ok || c.cfg.Reader == nil {
		return false, nil
	}
	repo := d.Tag.Repo
	tags, ok := current[repo]
	if !ok {
		tags = map[string]digest.Digest{}
		err := c.cfg.Reader.Tags(ctx, repo, func(tag string, cur digest.Digest) error {
			tags[tag] = cur
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		current[repo] = tags
	}
	if cur, found := tags[d.Tag.Name]; found && d.Digest != "" && cur != d.Digest {
		return true, nil
	}
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			return false, err
		}
	}
	return false, td.DeleteTag(ctx, repo, d.Tag.Name)
}

// settleTag looks at a removed tag after its Collected event was applied:
// if the projection kept it (it was set again meanwhile), its link is put
// back where the projection says it points.
func (c *Collector) settleTag(ctx context.Context, d refcount.TagDue, rep *Report) error {
	ni, ok, err := c.cfg.Projection.Get(d.Tag)
	if err != nil {
		return err
	}
	if !ok || !ni.Present {
		rep.Expired++
		c.m.deletions.WithLabelValues(string(events.NodeTag), "expire").Inc()
		c.noteRemoved(d.Tag)
		return nil
	}
	rep.Restored++
	c.m.races.WithLabelValues(string(events.NodeTag)).Inc()
	if c.ownerOf(ni.Origin, events.NodeTag) != nil {
		return nil // the owner's row: nothing to link back
	}
	if _, isTD := c.cfg.Storage.(TagDeleter); !isTD || len(ni.Holds) == 0 {
		return nil
	}
	c.cfg.Logger.Warn("an expired tag was set again while being removed; linked back", "tag", d.Tag.String())
	return c.cfg.Storage.LinkTag(ctx, d.Tag.Repo, d.Tag.Name, ni.Holds[0].Digest)
}

// RestoreTag brings back a tag from the time machine: its link in storage
// and a tag.set event. A tag whose window has ended, but whose revision is
// still in the trash, comes back with its revision (Restore). A tag with
// a database owner is the owner's to restore: it is asked to (Restorer),
// and its tag.set published; an owner without a restore service gets
// ErrOwnerRestores.
func (c *Collector) RestoreTag(ctx context.Context, repo, tag string) (Restored, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ref := events.NodeRef{Kind: events.NodeTag, Repo: repo, Name: tag}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return Restored{}, err
	}
	if origin, own, err := c.tagOwner(ref); err != nil {
		return Restored{}, err
	} else if own != nil {
		return c.restoreOwnedTag(ctx, ref, origin, own)
	}
	life, ok, err := c.cfg.Projection.TagLifeOf(ref)
	if err != nil {
		return Restored{}, err
	}
	if !ok || !life.InTimeMachine() || life.Digest == "" {
		return c.restoreTagFromTrash(ctx, ref)
	}
	mref := events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: life.Digest}
	if ni, ok, err := c.cfg.Projection.Get(mref); err != nil {
		return Restored{}, err
	} else if !ok || !ni.Present {
		return Restored{}, fmt.Errorf("%w: %s was deleted by digest", ErrDataGone, mref)
	}
	if err := c.cfg.Storage.LinkTag(ctx, repo, tag, life.Digest); err != nil {
		return Restored{}, err
	}
	ev := events.Event{V: events.Version, ID: "restore-" + newID(), Time: c.cfg.Now().UTC(), Source: c.cfg.Source,
		Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: tag, Digest: life.Digest}}
	if err := c.cfg.Log.Publish(ctx, []events.Event{ev}); err != nil {
		return Restored{}, err
	}
	if _, err := c.cfg.Log.CatchUp(ctx); err != nil {
		return Restored{}, err
	}
	c.m.restores.Inc()
	return Restored{Manifest: mref, Tags: []string{tag}}, nil
}

// restoreTagFromTrash restores the trashed revision a deleted tag pointed
// at, with the tag.
func (c *Collector) restoreTagFromTrash(ctx context.Context, ref events.NodeRef) (Restored, error) {
	trash, err := c.cfg.Projection.Trash()
	if err != nil {
		return Restored{}, err
	}
	for _, e := range trash {
		if e.Node.Repo == ref.Repo && slices.Contains(e.Tags, ref.Name) {
			return c.restore(ctx, ref.Repo, e.Node.Digest)
		}
	}
	return Restored{}, fmt.Errorf("%w: %s", ErrNotInTimeMachine, ref)
}

// healTag links back a tag the collector removed (expired, purged) that a
// late statement proved set: where the projection says it points, unless
// storage has it already.
func (c *Collector) healTag(ctx context.Context, n events.NodeRef) error {
	ni, ok, err := c.cfg.Projection.Get(n)
	if err != nil || !ok || !ni.Present || len(ni.Holds) == 0 {
		return err // deleted again since: nothing to heal
	}
	want := ni.Holds[0].Digest
	found := false
	err = c.cfg.Reader.Tags(ctx, n.Repo, func(tag string, cur digest.Digest) error {
		found = found || (tag == n.Name && cur == want)
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if found {
		return nil
	}
	return c.cfg.Storage.LinkTag(ctx, n.Repo, n.Name, want)
}
