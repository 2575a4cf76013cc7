package collector

// # Empty directories
//
// On Distribution's filesystem driver, what a pass unlinks and purges
// leaves directories behind: a repository whose every tag, revision and
// layer link went is a tree of empty directories, and so is a blob prefix
// whose every blob was purged. A pass remembers the repositories and the
// blobs it removed something from and, at its end, asks Config.Dirs to
// remove their empty directories that are older than the grace (store's
// EmptyDirs: rmdir only, deepest first, never an upload). A repository is
// pruned only while the projection holds nothing of it. What is too recent
// stays remembered for a later pass. Once a day, and at the first pass of a
// process (what an earlier process remembered is gone with it), every
// repository in storage that the projection holds nothing of is
// remembered too. Object stores have no directories: Config.Dirs stays nil.

import (
	"context"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// EmptyDirs removes empty directories from a storage that keeps them
// (store.EmptyDirs, for the filesystem driver). Each call removes, with
// rmdir semantics, the directories of one repository or one blob that are
// empty and whose modification time is before `before`, and says whether
// some remain only for being too recent (pending: to try again later).
type EmptyDirs interface {
	PruneRepository(ctx context.Context, repo string, before time.Time) (removed int, pending bool, err error)
	PruneBlob(ctx context.Context, d digest.Digest, before time.Time) (removed int, pending bool, err error)
}

// RepositoryLister lists the repositories in storage (store.Driver); with
// it, the collector also finds the empty repositories that an earlier
// process left.
type RepositoryLister interface {
	Repositories(ctx context.Context, fn func(repo string) error) error
}

// DefaultDirSweepInterval is how often every repository in storage is
// looked at for empty directories (besides those a pass removed from).
const DefaultDirSweepInterval = 24 * time.Hour

// dirQueue is what is left to prune: repositories and blobs that passes
// removed something from.
type dirQueue struct {
	mu    sync.Mutex
	repos map[string]bool
	blobs map[digest.Digest]bool
	swept time.Time // the last sweep of every repository
}

// note remembers where a removal may have left empty directories.
func (q *dirQueue) note(n events.NodeRef) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.repos == nil {
		q.repos, q.blobs = map[string]bool{}, map[digest.Digest]bool{}
	}
	switch n.Kind {
	case events.NodeBlob:
		q.blobs[n.Digest] = true
	case events.NodeTag, events.NodeManifest, events.NodeLayer:
		q.repos[n.Repo] = true
	}
}

// take returns what is remembered and forgets it.
func (q *dirQueue) take() (repos []string, blobs []digest.Digest) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for r := range q.repos {
		repos = append(repos, r)
	}
	for d := range q.blobs {
		blobs = append(blobs, d)
	}
	q.repos, q.blobs = nil, nil
	return repos, blobs
}

// noteRemoved remembers what storage operations of a round removed.
func (c *Collector) noteRemoved(n events.NodeRef) {
	if c.cfg.Dirs != nil {
		c.dirs.note(n)
	}
}

// pruneDirs removes the empty directories of what passes removed from,
// when older than the grace. Failures are logged: a directory left is
// only a directory.
func (c *Collector) pruneDirs(ctx context.Context) {
	if c.cfg.Dirs == nil {
		return
	}
	now := c.cfg.Now()
	before := now.Add(-c.cfg.Projection.Options().Grace)
	c.sweepDirs(ctx, now)
	repos, blobs := c.dirs.take()
	for _, repo := range repos {
		held, err := c.cfg.Projection.HoldsRepository(repo)
		if err != nil {
			c.cfg.Logger.Warn("empty directories: projection", "repo", repo, "err", err)
			c.dirs.note(events.NodeRef{Kind: events.NodeTag, Repo: repo})
			continue
		}
		if held {
			continue // it has content; its next removal brings it back here
		}
		n, pending, err := c.cfg.Dirs.PruneRepository(ctx, repo, before)
		c.m.dirsRemoved.Add(float64(n))
		if err != nil {
			c.cfg.Logger.Warn("empty directories of a repository", "repo", repo, "err", err)
		}
		if (pending || err != nil) && ctx.Err() == nil {
			c.dirs.note(events.NodeRef{Kind: events.NodeTag, Repo: repo})
		}
	}
	for _, d := range blobs {
		n, pending, err := c.cfg.Dirs.PruneBlob(ctx, d, before)
		c.m.dirsRemoved.Add(float64(n))
		if err != nil {
			c.cfg.Logger.Warn("empty directories of a blob", "digest", d.String(), "err", err)
		}
		if (pending || err != nil) && ctx.Err() == nil {
			c.dirs.note(events.NodeRef{Kind: events.NodeBlob, Digest: d})
		}
	}
}

// sweepDirs remembers every repository in storage that the projection
// holds nothing of, at the first pass and once per DefaultDirSweepInterval.
func (c *Collector) sweepDirs(ctx context.Context, now time.Time) {
	lister, ok := c.cfg.Storage.(RepositoryLister)
	if !ok || (!c.dirs.swept.IsZero() && now.Sub(c.dirs.swept) < DefaultDirSweepInterval) {
		return
	}
	part := c.cfg.Projection.Options().Partition
	err := lister.Repositories(ctx, func(repo string) error {
		if !part.HasRepo(repo) {
			return nil // another partition's: its projection knows whether it is empty
		}
		held, err := c.cfg.Projection.HoldsRepository(repo)
		if err == nil && !held {
			c.dirs.note(events.NodeRef{Kind: events.NodeTag, Repo: repo})
		}
		return err
	})
	if err != nil {
		c.cfg.Logger.Warn("empty directories: listing repositories", "err", err)
		return
	}
	c.dirs.swept = now
}
