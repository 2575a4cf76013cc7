package reconcile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// ErrRebuildTarget is returned by Rebuild when the target file already exists.
var ErrRebuildTarget = errors.New("collector: rebuild target exists")

// StorageWalkStreamID is the stream identity a projection rebuilt from a
// walk of storage is bound to. No stream has it: the cursor of such a file
// counts the walk's events, not a position in any log, so no follower may
// follow it.
const StorageWalkStreamID = "storage-walk"

// rebuildFromLog writes a fresh projection at path, which must not exist,
// by replaying the whole log, and binds it to the stream it replayed. It
// returns the projection, open.
func rebuildFromLog(ctx context.Context, path string, opts refcount.Options, replay eventlog.Replay, prog *progress) (*refcount.Projection, error) {
	p, err := openFresh(path, opts)
	if err != nil {
		return nil, err
	}
	err = replay(ctx, p.BindStream, func(recs []events.Record) error {
		_, err := p.Apply(recs)
		prog.repld.Add(int64(len(recs)))
		return err
	})
	if err != nil {
		p.Close()
		os.Remove(path)
		return nil, err
	}
	return p, nil
}

// rebuildFromStorage writes a fresh projection at path, which must not
// exist, from a walk of storage: the presence events of a reconcile pass
// against an empty projection, applied directly. Its cursor counts those
// events; it is not a position in the log, so such a file is for
// comparison and for recovery after the log was lost, not for following
// the log: it is bound to StorageWalkStreamID, which a follower refuses.
// It returns the projection, open, and the walk's drift.
func (r *Reconciler) rebuildFromStorage(ctx context.Context, path string) (*refcount.Projection, Drift, error) {
	opts := r.cfg.Projection.Options()
	p, err := openFresh(path, opts)
	if err != nil {
		return nil, Drift{}, err
	}
	if err := p.BindStream(StorageWalkStreamID); err != nil {
		p.Close()
		os.Remove(path)
		return nil, Drift{}, err
	}
	cfg := r.cfg
	cfg.Projection, cfg.Log, cfg.Registerer = p, &collector.DirectLog{P: p}, nil
	fresh, err := New(cfg)
	if err == nil {
		fresh.prog, fresh.inRebuild = r.prog, true // the walk's progress is the rebuild's
		var d Drift
		d, err = fresh.Reconcile(ctx, true)
		if err == nil {
			return p, d, nil
		}
	}
	p.Close()
	os.Remove(path)
	return nil, Drift{}, err
}

// openFresh creates path exclusively (O_EXCL: an existing file or link
// there, even a dangling one, is refused and never followed) and opens a
// projection in it.
func openFresh(path string, opts refcount.Options) (*refcount.Projection, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %s", ErrRebuildTarget, path)
	}
	if err != nil {
		return nil, fmt.Errorf("collector: rebuild target: %w", err)
	}
	f.Close()
	opts.ReadOnly = false
	p, err := refcount.Open(path, opts)
	if err != nil {
		os.Remove(path)
	}
	return p, err
}

// RebuildReport is what Rebuild did, and how the rebuilt projection
// compares with the live one.
type RebuildReport struct {
	Path string `json:"path"`
	// From is "log" (replayed from sequence 1) or "storage" (walked).
	From string `json:"from"`
	// Cursor is the rebuilt projection's cursor; LiveCursor the live one's
	// when the comparison ran. A log rebuild compares equal only when they match.
	Cursor     uint64 `json:"cursor"`
	LiveCursor uint64 `json:"liveCursor"`
	Nodes      int    `json:"nodes"`
	// Differences counts the nodes whose dump lines differ (present in one
	// projection only, or different); Examples shows the first few.
	Differences int      `json:"differences"`
	Examples    []string `json:"examples,omitempty"`
	// TimingDifferences counts the nodes that differ only in their lease
	// or eligibility time, which the grace in force when an event was
	// applied decides: a grace changed since (a restart with another
	// --grace) shows here, and is no difference.
	TimingDifferences int `json:"timingDifferences,omitempty"`
	// Scanned is what the walk saw, for a storage rebuild.
	Scanned  map[string]int `json:"scanned,omitempty"`
	Duration time.Duration  `json:"duration"`
}

// Rebuild writes a fresh projection at path, which must not exist: from the
// log when replay is not nil and the log reaches back to sequence 1, else
// from a walk of storage. It then compares the result with the live
// projection, dump for dump (ignoring leases and times for a storage
// rebuild, which cannot know them), and closes the rebuilt file.
func (r *Reconciler) Rebuild(ctx context.Context, path string, replay eventlog.Replay) (RebuildReport, error) {
	start := time.Now()
	rep := RebuildReport{Path: path, From: "log"}
	r.prog.start("rebuild")
	defer r.prog.stop()
	var p *refcount.Projection
	var err error
	if replay != nil {
		p, err = rebuildFromLog(ctx, path, r.cfg.Projection.Options(), replay, r.prog)
	}
	if replay == nil || errors.Is(err, eventlog.ErrLogTruncated) {
		if err != nil {
			r.cfg.Logger.Warn("rebuild: the log is truncated, walking storage instead", "err", err)
		}
		rep.From = "storage"
		var d Drift
		p, d, err = r.rebuildFromStorage(ctx, path)
		rep.Scanned = d.Scanned
	}
	if err != nil {
		return rep, err
	}
	defer p.Close()
	if rep.Cursor, err = p.Cursor(); err != nil {
		return rep, err
	}
	if rep.LiveCursor, err = r.cfg.Projection.Cursor(); err != nil {
		return rep, err
	}
	cmp, err := compareProjections(r.cfg.Projection, p, rep.From == "storage", r.cfg.Examples)
	if err != nil {
		return rep, err
	}
	rep.Nodes, rep.Differences, rep.Examples, rep.TimingDifferences = cmp.Nodes, cmp.Differences, cmp.Examples, cmp.Timing
	rep.Duration = time.Since(start)
	return rep, nil
}

// comparison is the result of compareProjections.
type comparison struct {
	Nodes       int      // nodes of the second projection
	Differences int      // nodes whose lines differ or that only one side holds
	Examples    []string // the first differences, "-" for the first projection, "+" for the second
	Timing      int      // nodes that differ only in lease or eligibility times
}

// compareProjections compares two projections dump line by dump line, by
// node. With ignoreTimes, leases, times, sizes and media types are left out
// (what a storage walk cannot know or knows differently). At most max
// examples are kept.
func compareProjections(a, b *refcount.Projection, ignoreTimes bool, max int) (comparison, error) {
	var cmp comparison
	timeless := map[string][2][]byte{} // the lines without lease and eligibility, by node: a's, b's
	lines := func(p *refcount.Projection, side int) (map[string][]byte, []string, error) {
		m := map[string][]byte{}
		var order []string
		var buf bytes.Buffer
		if err := p.Dump(&buf); err != nil {
			return nil, nil, err
		}
		sc := bufio.NewScanner(&buf)
		sc.Buffer(make([]byte, 0, 1<<16), events.MaxEncodedSize*4)
		for sc.Scan() {
			line := append([]byte(nil), sc.Bytes()...)
			var ni refcount.NodeInfo
			if err := json.Unmarshal(line, &ni); err != nil {
				return nil, nil, fmt.Errorf("collector: compare: %w", err)
			}
			if ignoreTimes {
				ni.Lease, ni.Since, ni.Eligible, ni.LastSeq, ni.Size, ni.MediaType = nil, nil, nil, 0, 0, ""
				var err error
				if line, err = json.Marshal(ni); err != nil {
					return nil, nil, err
				}
			}
			k := ni.Node.String()
			ni.Lease, ni.Eligible = nil, nil
			tl, err := json.Marshal(ni)
			if err != nil {
				return nil, nil, err
			}
			pair := timeless[k]
			pair[side] = tl
			timeless[k] = pair
			m[k] = line
			order = append(order, k)
		}
		return m, order, sc.Err()
	}
	am, aorder, err := lines(a, 0)
	if err != nil {
		return cmp, err
	}
	bm, border, err := lines(b, 1)
	if err != nil {
		return cmp, err
	}
	cmp.Nodes = len(border)
	diff := func(s string) {
		cmp.Differences++
		if len(cmp.Examples) < max {
			cmp.Examples = append(cmp.Examples, s)
		}
	}
	for _, k := range aorder {
		bl, ok := bm[k]
		switch {
		case !ok:
			diff("- " + string(am[k]))
		case bytes.Equal(am[k], bl):
		case bytes.Equal(timeless[k][0], timeless[k][1]):
			cmp.Timing++
		default:
			diff("- " + string(am[k]))
			if len(cmp.Examples) < max {
				cmp.Examples = append(cmp.Examples, "+ "+string(bl))
			}
		}
	}
	for _, k := range border {
		if _, ok := am[k]; !ok {
			diff("+ " + string(bm[k]))
		}
	}
	return cmp, nil
}
