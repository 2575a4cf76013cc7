package daemon

// Tag restores from the time machine, repository purges and the audit of
// the graph at a point of the log's history.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// HTTP paths of this file's endpoints.
const (
	PurgePath = "/v1/purge"
)

// PurgeSource is the Source of the repository.deleted events `refgc
// purge` publishes.
const PurgeSource = "refgc-admin"

// RestoreTag brings a tag back from the time machine (or, past its
// window, with its revision from the trash); a tag a database owner keeps
// is restored by its owner (collector.RestoreTag).
func (d *Daemon) RestoreTag(ctx context.Context, repo, tag string) (collector.Restored, error) {
	if d.col == nil {
		return collector.Restored{}, ErrNoStorage
	}
	if err := events.ValidateRepo(repo); err != nil {
		return collector.Restored{}, fmt.Errorf("daemon: %w", err)
	}
	if err := events.ValidateTag(tag); err != nil {
		return collector.Restored{}, fmt.Errorf("daemon: %w", err)
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	return d.col.RestoreTag(ctx, repo, tag)
}

// ErrOwnedRepository is returned by Purge for a repository whose tags a
// database owner keeps: a repository.deleted from refgc would change
// refgc's graph only, and the owner would answer every deletion in use.
var ErrOwnedRepository = errors.New("daemon: the repository's tags are kept in its registry's database: " +
	"purge it in that registry, which publishes repository.deleted")

// PurgePlan is what a purge of a repository removes: its present tags at
// once (into the time machine, if the repository has a window), then, as
// garbage after the grace, its revisions and layer links; the blob data
// only this repository links (UniqueBytes) is purged after the retention.
type PurgePlan struct {
	Repo   string             `json:"repo"`
	DryRun bool               `json:"dryRun"`
	Tags   []string           `json:"tags"`
	Usage  refcount.RepoUsage `json:"usage"`
	// TimeMachine is the repository's window: how long its tags stay
	// restorable after the purge.
	TimeMachine time.Duration `json:"timeMachine"`
	// Event is the id of the repository.deleted event published (none in
	// a dry run).
	Event string `json:"event,omitempty"`
	// Owner is the source whose database owns the repository's tags, if
	// any: such a repository is purged in that registry.
	Owner string `json:"owner,omitempty"`
}

// Purge removes a repository online: it publishes a repository.deleted
// event, after which collector passes remove its tags, revisions and
// layer links with the usual grace, soft delete and restore. A dry run
// only reports what the repository holds.
func (d *Daemon) Purge(ctx context.Context, repo string, dryRun bool) (PurgePlan, error) {
	plan := PurgePlan{Repo: repo, DryRun: dryRun, Tags: []string{}, Usage: refcount.RepoUsage{Repo: repo}}
	if err := events.ValidateRepo(repo); err != nil {
		return plan, fmt.Errorf("daemon: %w", err)
	}
	plan.TimeMachine = d.proj.TimeMachineWindow(repo)
	us, err := d.proj.Usage()
	if err != nil {
		return plan, err
	}
	for _, u := range us {
		if u.Repo == repo {
			plan.Usage = u
		}
	}
	err = d.proj.ForEach(func(ni refcount.NodeInfo) error {
		if ni.Node.Kind == events.NodeTag && ni.Node.Repo == repo && ni.Present {
			plan.Tags = append(plan.Tags, ni.Node.Name)
			if d.ownedBy(ni.Origin, events.NodeTag) {
				plan.Owner = ni.Origin
			}
		}
		return nil
	})
	if err != nil || dryRun {
		return plan, err
	}
	if plan.Owner != "" {
		return plan, fmt.Errorf("%w (%s, source %s)", ErrOwnedRepository, repo, plan.Owner)
	}
	now := d.now().UTC()
	ev := events.Event{V: events.Version, ID: "purge-" + strconv.FormatInt(now.UnixNano(), 36), Time: now,
		Source: PurgeSource, Kind: events.RepositoryDeleted, Repo: &events.Repo{Name: repo}}
	if err := d.jslog.Publish(ctx, []events.Event{ev}); err != nil {
		return plan, err
	}
	if _, err := d.jslog.CatchUp(ctx); err != nil {
		return plan, err
	}
	plan.Event = ev.ID
	d.log.Info("repository purged; collector passes remove what it holds", "repo", repo, "tags", len(plan.Tags),
		"uniqueBytes", plan.Usage.UniqueBytes)
	return plan, nil
}

// ErrPointGone is returned by DumpAt for a point older than both the
// oldest snapshot that the log continues from and the log's first event:
// nothing left can show the graph as it was then.
var ErrPointGone = errors.New("daemon: the point is older than the oldest snapshot and the log")

// DumpAt writes the projection as it was at a point of the log's history
// (a sequence, or an RFC 3339 time) and returns the cursor it was rebuilt
// to. It starts from the newest snapshot at or before the point (of this
// stream, taken at a sequence at or before it, or, for a time, by refgc's
// clock at or before it) that the log still continues from, and replays
// the log after it up to the point; without one, it replays the log from
// sequence 1. The scratch projection lives under the data directory and
// is removed afterwards.
func (d *Daemon) DumpAt(ctx context.Context, w io.Writer, at string) (uint64, error) {
	pt, err := reconcile.ParsePoint(at)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp(d.cfg.DataDir, "dump-at-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, ProjectionFile)
	p, err := d.projectionAt(ctx, path, pt)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	cur, err := p.Cursor()
	if err != nil {
		return 0, err
	}
	return cur, p.Dump(w)
}

// projectionAt builds the graph as of pt at path: from a snapshot and
// the log after it, or from the whole log.
func (d *Daemon) projectionAt(ctx context.Context, path string, pt reconcile.Point) (*refcount.Projection, error) {
	snaps, err := d.snapshotStore(ctx)
	if err != nil {
		return nil, err
	}
	all, err := snaps.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	info, err := d.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("daemon: stream: %w", err)
	}
	id, first := eventlog.StreamID(info), info.State.FirstSeq
	// The newest snapshot at or before the point: an older one needs more
	// of the log, so if the log does not continue from it, none will do.
	var from *eventlog.Snapshot
	for i := len(all) - 1; i >= 0; i-- {
		if sn := all[i]; sn.Stream == id && snapshotBefore(sn, pt) {
			if sn.Seq+1 >= first {
				from = &all[i]
			}
			break
		}
	}
	if from == nil {
		opts := d.proj.Options()
		p, err := reconcile.ProjectionAt(ctx, path, opts, eventlog.StreamReplay(d.stream, 0), pt)
		if errors.Is(err, eventlog.ErrLogTruncated) {
			oldest := "none is kept"
			for _, sn := range all {
				if sn.Stream == id && sn.Seq+1 >= first {
					oldest = fmt.Sprintf("sequence %d, taken %s", sn.Seq, snapshotTime(sn).UTC().Format(time.RFC3339))
					break
				}
			}
			return nil, fmt.Errorf("%w: %s is before the oldest snapshot the log continues from (%s) and the log's first event (sequence %d)",
				ErrPointGone, pointString(pt), oldest, first)
		}
		return p, err
	}
	if _, err := downloadSnapshot(ctx, snaps, from.Name, path); err != nil {
		return nil, err
	}
	opts := d.proj.Options()
	opts.NoSync = true
	p, err := refcount.Open(path, opts)
	if err != nil {
		return nil, fmt.Errorf("daemon: snapshot %s: %w", from.Name, err)
	}
	if err := reconcile.ReplayUntil(ctx, p, eventlog.StreamReplayFrom(d.stream, 0, from.Seq+1), pt); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// pointString says a point as the user gave it.
func pointString(pt reconcile.Point) string {
	if pt.Seq != 0 {
		return fmt.Sprintf("sequence %d", pt.Seq)
	}
	return pt.Time.UTC().Format(time.RFC3339Nano)
}

// snapshotTime is when a snapshot was taken: by refgc's clock, or, for a
// snapshot of an earlier version, when the server stored it.
func snapshotTime(sn eventlog.Snapshot) time.Time {
	if !sn.Taken.IsZero() {
		return sn.Taken
	}
	return sn.Time
}

// snapshotBefore reports whether a snapshot lies at or before the point:
// its sequence, or the time it was taken, is not after it.
func snapshotBefore(sn eventlog.Snapshot, pt reconcile.Point) bool {
	if pt.Seq != 0 {
		return sn.Seq <= pt.Seq
	}
	return !snapshotTime(sn).After(pt.Time)
}

// restoreTag answers POST /v1/restore?repo=R&tag=T.
func (d *Daemon) restoreTag(w http.ResponseWriter, r *http.Request, repo, tag string) {
	res, err := d.RestoreTag(r.Context(), repo, tag)
	switch {
	case errors.Is(err, collector.ErrNotInTimeMachine):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// purge answers POST /v1/purge?repo=R[&dry_run=true].
func (d *Daemon) purge(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dry, _ := strconv.ParseBool(q.Get("dry_run"))
	plan, err := d.Purge(r.Context(), q.Get("repo"), dry)
	switch {
	case errors.Is(err, ErrOwnedRepository):
		http.Error(w, err.Error(), http.StatusConflict)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, http.StatusOK, plan)
}

// dumpAt answers GET /v1/dump?at=SEQ|TIME; the replayed cursor is in the
// Refgc-Cursor trailer.
func (d *Daemon) dumpAt(w http.ResponseWriter, r *http.Request, at string) {
	if _, err := reconcile.ParsePoint(at); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Trailer", "Refgc-Cursor")
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	cur, err := d.DumpAt(r.Context(), bw, at)
	if err != nil {
		// Nothing reached the client yet unless the dump itself failed.
		d.log.Error("dump at", "at", at, "err", err)
		code := http.StatusInternalServerError
		if errors.Is(err, ErrPointGone) || errors.Is(err, eventlog.ErrLogTruncated) {
			code = http.StatusConflict // a bounded log no longer holds the past
		}
		http.Error(w, err.Error(), code)
		return
	}
	_ = bw.Flush()
	w.Header().Set("Refgc-Cursor", strconv.FormatUint(cur, 10))
}
