package collector

// # The storage check
//
// The projection knows only what notifications told it, and notifications
// come late, get lost and arrive out of order. So before a round unlinks
// anything in a repository, it reads that repository's storage once and
// refuses every candidate that storage does not explain:
//
//   - a manifest revision that a tag's current link points at (a tag the
//     projection has not heard of yet);
//   - a revision or layer link whose link file was written after the
//     newest event that stated it present (a manifest PUT or blob upload
//     whose notification is still on its way);
//   - a revision or layer link that a revision unknown to the projection
//     references (a manifest push whose notification was lost).
//
// A refusal is counted by reason and published as a Refused event for the
// repository, so that collection there pauses until a reconcile of the
// repository has run. The check lists tags and revisions once per
// repository with manifest or layer candidates, reads the current link of
// the tags whose history holds a candidate (refuseTagged), stats each
// candidate's link, and reads only the manifests the projection does not
// know: its cost follows the candidates of a round and the repositories
// they are in, not the registry's size.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// StorageReader is what the storage check reads. store.Driver implements it.
type StorageReader interface {
	Tags(ctx context.Context, repo string, fn func(tag string, current digest.Digest) error) error
	Revisions(ctx context.Context, repo string, fn func(d digest.Digest) error) error
	// LinkModTime gives an error matching fs.ErrNotExist for a missing link.
	LinkModTime(ctx context.Context, n events.NodeRef) (time.Time, error)
	ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
}

// Refusal reasons of the storage check: values of the reason label of
// refgc_collector_refused_total (beside RefuseRecheck).
const (
	// RefuseTagged: a tag in storage points at the candidate revision.
	RefuseTagged = "tagged_in_storage"
	// RefuseRewritten: the candidate's link was written after the newest
	// event that stated it present.
	RefuseRewritten = "rewritten"
	// RefuseUnknownReference: a revision the projection does not know
	// references the candidate.
	RefuseUnknownReference = "unknown_reference"
	// RefuseSubjectLive: the candidate is a referrer whose subject's
	// revision is in storage and stays (a subject pushed again whose
	// notification is late): a referrer lives as long as its subject.
	RefuseSubjectLive = "subject_live"
	// RefuseStorageError: the repository could not be read (a storage
	// error, a corrupt link): its candidates wait for the next round, and
	// the other repositories go on. No pause: nothing was found missing.
	RefuseStorageError = "storage_error"
	// RefuseRecheck: the projection's re-check turned the candidate down
	// (held, leased, or changed since it was chosen). Not a storage finding.
	RefuseRecheck = "recheck"
	// RefuseLastLook: the projection showed, right before the storage
	// operation, that the candidate raced since its re-check (named,
	// held again, or gone): the removal is not done.
	RefuseLastLook = "last_look"
	// RefuseNoOwner: a collector without storage (every object goes to an
	// owner) found a candidate that no owner takes: it is left alone.
	RefuseNoOwner = "no_owner"
)

// RefuseReasons lists the reasons a candidate is refused.
var RefuseReasons = []string{RefuseTagged, RefuseRewritten, RefuseUnknownReference, RefuseSubjectLive,
	RefuseStorageError, RefuseRecheck, RefuseLastLook, RefuseNoOwner}

// refusal is one candidate the storage check turned down.
type refusal struct {
	node   events.NodeRef
	reason string
	detail string
}

// confirm runs the storage check over the unlink candidates of a round and
// returns the refusals. Candidates of other kinds pass unchecked.
func (c *Collector) confirm(ctx context.Context, cands []refcount.Candidate) ([]refusal, error) {
	byRepo := map[string][]refcount.Candidate{}
	for _, cd := range cands {
		if (cd.Node.Kind == events.NodeManifest || cd.Node.Kind == events.NodeLayer) && c.ownerOf(cd.Origin, cd.Node.Kind) == nil {
			byRepo[cd.Node.Repo] = append(byRepo[cd.Node.Repo], cd)
		}
	}
	var out []refusal
	results := make(chan []refusal, len(byRepo))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.cfg.Concurrency)
	for repo, cs := range byRepo {
		g.Go(func() error {
			rs, err := c.confirmRepo(gctx, repo, cs)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				rs = rs[:0]
				for _, cd := range cs {
					rs = append(rs, refusal{node: cd.Node, reason: RefuseStorageError, detail: err.Error()})
				}
			}
			results <- rs
			return nil
		})
	}
	err := g.Wait()
	close(results)
	for rs := range results {
		out = append(out, rs...)
	}
	return out, err
}

func (c *Collector) confirmRepo(ctx context.Context, repo string, cands []refcount.Candidate) ([]refusal, error) {
	rd := c.cfg.Reader
	want := map[events.NodeRef]bool{}
	manifests := false
	for _, cd := range cands {
		want[cd.Node] = true
		manifests = manifests || cd.Node.Kind == events.NodeManifest
	}
	var out []refusal
	refuse := func(n events.NodeRef, reason, detail string) {
		if want[n] {
			want[n] = false
			out = append(out, refusal{node: n, reason: reason, detail: detail})
		}
	}
	if manifests {
		if err := c.refuseTagged(ctx, repo, want, refuse); err != nil {
			return nil, err
		}
	}
	// The links' times first (storage reads), then what the projection
	// heard of the linked ones, in one read transaction.
	var linked []events.NodeRef
	var written []time.Time
	for _, cd := range cands {
		if !want[cd.Node] {
			continue
		}
		mt, err := rd.LinkModTime(ctx, cd.Node)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // already unlinked: unlinking again is a no-op
		case err != nil:
			return nil, err
		}
		linked, written = append(linked, cd.Node), append(written, mt)
	}
	err := c.cfg.Projection.LookupMany(linked, func(i int, ni refcount.NodeInfo, ok bool) error {
		switch heard, mt := ni.Heard, written[i]; {
		case !ok:
			refuse(linked[i], RefuseRewritten, "no longer in the projection")
		case heard == nil:
			// Recorded before the projection kept the time (an older
			// file): the other checks stand for this one.
		case mt.After(heard.Add(c.cfg.ClockSkew)):
			refuse(linked[i], RefuseRewritten, fmt.Sprintf("link written %s, last heard %s",
				mt.UTC().Format(time.RFC3339Nano), heard.UTC().Format(time.RFC3339Nano)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var listed []events.NodeRef
	stored := map[digest.Digest]bool{}
	err = rd.Revisions(ctx, repo, func(d digest.Digest) error {
		stored[d] = true
		if n := (events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: d}); !want[n] {
			listed = append(listed, n)
		}
		return nil
	})
	// A repository without revisions lists nothing, without an error: an
	// error, even one wrapping "not exist", is a listing cut short, whose
	// missing revisions could hold what this round would unlink.
	if err != nil {
		return nil, err
	}
	var unknown []digest.Digest
	err = c.cfg.Projection.LookupMany(listed, func(i int, ni refcount.NodeInfo, ok bool) error {
		if !ok || !ni.Present || ni.Pinned {
			unknown = append(unknown, listed[i].Digest) // or known only by name: what it references is not
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, d := range unknown {
		b, err := rd.ReadBlob(ctx, d, MaxManifestBytes)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // a revision link without data references nothing readable
			}
			return nil, err
		}
		refs, err := events.ParseManifest("", b)
		if err != nil {
			// Not a manifest the registry could serve whole: the
			// reconciler reports it (unreadable_manifest); refusing
			// because of it would hold the repository for ever.
			c.cfg.Logger.Warn("storage check: unreadable revision", "repo", repo, "digest", d.String(), "err", err)
			continue
		}
		by := fmt.Sprintf("revision %s", d)
		for _, x := range refs.Blobs {
			refuse(events.NodeRef{Kind: events.NodeLayer, Repo: repo, Digest: x.Digest}, RefuseUnknownReference, by)
		}
		for _, x := range refs.Children {
			refuse(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: x.Digest}, RefuseUnknownReference, by)
		}
	}
	// A referrer goes with its subject only: while the subject's revision
	// is in storage and is not going in this round, the referrer stays.
	for changed := true; changed; {
		changed = false
		for _, cd := range cands {
			if cd.Node.Kind != events.NodeManifest || !want[cd.Node] {
				continue
			}
			m, ok, err := c.cfg.Projection.Manifest(cd.Node)
			if err != nil {
				return nil, err
			}
			if !ok || m.Subject == nil || !stored[m.Subject.Digest] {
				continue
			}
			if subj := (events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: m.Subject.Digest}); !want[subj] {
				refuse(cd.Node, RefuseSubjectLive, "subject "+m.Subject.Digest.String())
				changed = true
			}
		}
	}
	return out, nil
}
