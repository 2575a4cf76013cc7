package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// errDrift is returned by verify, a dry-run reconcile and rebuild when the
// projection and storage (or the rebuilt projection) differ; the report is
// printed first, and the exit status is 1.
var errDrift = errors.New("drift")

// offline locates the projection and the storage when no daemon answers,
// with the configuration loader of serve (loadConfig): --config,
// --data-dir and --storage-root, or their environment variables.
type offline struct {
	cfg               daemon.Config
	fs                *pflag.FlagSet
	file, storageRoot string
}

func (o *offline) flags(cmd *cobra.Command) {
	o.cfg = daemon.Defaults()
	o.fs = pflag.NewFlagSet("offline", pflag.ContinueOnError)
	o.fs.StringVarP(&o.file, "config", "c", "", "the daemon's YAML configuration (for its dataDir and storage, used when no daemon answers)")
	o.fs.StringVar(&o.cfg.DataDir, "data-dir", o.cfg.DataDir, "the daemon's data directory (overrides the configuration's)")
	o.fs.StringVar(&o.storageRoot, "storage-root", "", "registry filesystem storage root (overrides the configuration's storage)")
	cmd.Flags().AddFlagSet(o.fs)
}

// reconciler opens the projection read-only and the storage, and returns a
// reconciler without a log (it can verify and rebuild, never apply), and
// how it reports progress.
func (o *offline) reconciler(ctx context.Context) (*reconcile.Reconciler, progressPoll, func(), error) {
	r, expected, done, err := o.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	poll := func(context.Context) (daemon.PassProgress, bool) {
		pp := daemon.PassProgress{Progress: r.Progress(), Expected: expected}
		return pp, true
	}
	return r, poll, done, nil
}

// open opens what reconciler needs, and counts the projection's manifests
// and blobs: what the walk will see, for its progress.
func (o *offline) open(ctx context.Context) (*reconcile.Reconciler, int64, func(), error) {
	cfg := &o.cfg
	if err := loadConfig(o.fs, cfg, &o.file, &o.storageRoot); err != nil {
		return nil, 0, nil, err
	}
	if cfg.Storage == nil {
		return nil, 0, nil, fmt.Errorf("%w: give --config or --storage-root", daemon.ErrNoStorage)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := refcount.Open(filepath.Join(cfg.DataDir, daemon.ProjectionFile), refcount.Options{
		ReadOnly: true, Timeout: 200 * time.Millisecond, Untagged: refcount.Policy(cfg.Collector.Untagged),
		Grace: cfg.Collector.Grace, Retention: cfg.Collector.Retention,
		TimeMachine: cfg.Collector.TimeMachine, TimeMachineRepos: cfg.Collector.TimeMachineRepos,
	})
	if err != nil {
		return nil, 0, nil, fmt.Errorf("open projection: %w", err)
	}
	st, err := store.FromConfig(ctx, cfg.Storage, store.WithLogger(log))
	if err != nil {
		p.Close()
		return nil, 0, nil, fmt.Errorf("storage: %w", err)
	}
	r, err := reconcile.New(reconcile.Config{Projection: p, Store: st,
		Concurrency: cfg.Collector.Concurrency, Logger: log})
	if err != nil {
		p.Close()
		return nil, 0, nil, err
	}
	var expected int64
	if stats, err := p.Stats(); err == nil {
		expected = int64(stats.Nodes[events.NodeManifest] + stats.Nodes[events.NodeBlob])
	}
	return r, expected, func() { p.Close() }, nil
}

// daemonDown reports whether err means that nothing listens at the address.
func daemonDown(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// fetch calls the daemon at addr and decodes its JSON answer into out.
func fetch(ctx context.Context, method, addr, path string, out any) error {
	body, err := call(ctx, method, addr, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func newVerify() *cobra.Command {
	var addr string
	var o offline
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare registry storage with the projection; exit 1 with the drift when they differ",
		Long: "Ask the running daemon for a verify pass (GET /v1/verify). When no daemon answers, open the\n" +
			"projection read-only and the storage from --config / --storage-root and verify here.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var drift reconcile.Drift
			err := withProgress(cmd, daemonProgress(addr), func() error {
				return fetch(cmd.Context(), http.MethodGet, addr, daemon.VerifyPath, &drift)
			})
			if err != nil && daemonDown(err) {
				r, poll, done, oerr := o.reconciler(cmd.Context())
				if oerr != nil {
					return fmt.Errorf("daemon: %v; %w", err, oerr)
				}
				defer done()
				err = withProgress(cmd, poll, func() (err error) {
					drift, err = r.Verify(cmd.Context())
					return err
				})
			}
			if err != nil {
				return err
			}
			if err := render(cmd, drift, driftTable); err != nil {
				return err
			}
			if !drift.Clean() {
				return fmt.Errorf("%w: the projection differs from storage (%d differences)", errDrift, drift.Total())
			}
			return nil
		},
	}
	addrFlag(cmd, &addr)
	o.flags(cmd)
	return cmd
}

func newReconcile() *cobra.Command {
	var addr string
	var apply bool
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Ask the running daemon for a reconcile pass; a dry run (exit 1 on drift) unless --apply",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var drift reconcile.Drift
			p := daemon.ReconcilePath + "?" + url.Values{"apply": {fmt.Sprint(apply)}}.Encode()
			err := withProgress(cmd, daemonProgress(addr), func() error {
				return fetch(cmd.Context(), http.MethodPost, addr, p, &drift)
			})
			if err != nil {
				return err
			}
			if err := render(cmd, drift, driftTable); err != nil {
				return err
			}
			if !apply && !drift.Clean() {
				return fmt.Errorf("%w: the projection differs from storage (%d differences; run with --apply to correct them)", errDrift, drift.Total())
			}
			return nil
		},
	}
	addrFlag(cmd, &addr)
	cmd.Flags().BoolVar(&apply, "apply", false, "publish the corrections (default: only report the drift)")
	return cmd
}

func newRebuild() *cobra.Command {
	var addr, out string
	var o offline
	cmd := &cobra.Command{
		Use:   "rebuild --out FILE",
		Short: "Build a fresh projection into FILE and compare it with the live one; exit 1 on differences",
		Long: "Ask the running daemon (POST /v1/rebuild) to replay the event stream from its first sequence into\n" +
			"FILE, or to walk storage when the stream no longer starts at sequence 1. The daemon writes only new\n" +
			"files in its rebuild directory (--rebuild-dir, default DATA_DIR/rebuilds): FILE is a file name there,\n" +
			"or an absolute path in it. When no daemon answers, walk storage here (--config / --storage-root),\n" +
			"FILE being a new path on this machine.\n" +
			"A replayed FILE is bound to the stream it was replayed from, and refgc follows it only on that\n" +
			"stream; a walked FILE is bound to no stream, so refgc never follows it.\n" +
			"The live projection is not touched: to use a replayed FILE, stop refgc and put it in place of refs.db.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			remote := out // a name in the daemon's rebuild directory, or an absolute path there
			if filepath.Base(out) != out {
				remote = abs
			}
			var rep reconcile.RebuildReport
			err = withProgress(cmd, daemonProgress(addr), func() error {
				return fetch(cmd.Context(), http.MethodPost, addr, daemon.RebuildPath+"?"+url.Values{"out": {remote}}.Encode(), &rep)
			})
			if err != nil && daemonDown(err) {
				r, poll, done, oerr := o.reconciler(cmd.Context())
				if oerr != nil {
					return fmt.Errorf("daemon: %v; %w", err, oerr)
				}
				defer done()
				err = withProgress(cmd, poll, func() (err error) {
					rep, err = r.Rebuild(cmd.Context(), abs, nil)
					return err
				})
			}
			if err != nil {
				return err
			}
			if err := render(cmd, rep, rebuildTable); err != nil {
				return err
			}
			if rep.Differences > 0 {
				from := "the event log"
				if rep.From == "storage" {
					from = "storage"
				}
				return fmt.Errorf("%w: %d nodes of the live projection differ from the one rebuilt from %s", errDrift, rep.Differences, from)
			}
			return nil
		},
	}
	addrFlag(cmd, &addr)
	cmd.Flags().StringVar(&out, "out", "", "the new `file` to write the rebuilt projection to (a name in the daemon's rebuild directory)")
	_ = cmd.MarkFlagRequired("out")
	o.flags(cmd)
	return cmd
}
