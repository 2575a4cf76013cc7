package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// errDrift is returned by verify, a dry-run reconcile and rebuild when the
// projection and storage (or the rebuilt projection) differ; the report is
// printed first, and the exit status is 1.
var errDrift = errors.New("the projection differs from storage")

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
// reconciler without a log (it can verify and rebuild, never apply).
func (o *offline) reconciler(ctx context.Context) (*reconcile.Reconciler, func(), error) {
	cfg := &o.cfg
	if err := loadConfig(o.fs, cfg, &o.file, &o.storageRoot); err != nil {
		return nil, nil, err
	}
	if cfg.Storage == nil {
		return nil, nil, fmt.Errorf("%w: give --config or --storage-root", daemon.ErrNoStorage)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := refcount.Open(filepath.Join(cfg.DataDir, daemon.ProjectionFile), refcount.Options{
		ReadOnly: true, Timeout: 200 * time.Millisecond, Untagged: refcount.Policy(cfg.Collector.Untagged),
		Grace: cfg.Collector.Grace, Retention: cfg.Collector.Retention,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("open projection: %w", err)
	}
	st, err := store.FromConfig(ctx, cfg.Storage, store.WithLogger(log))
	if err != nil {
		p.Close()
		return nil, nil, fmt.Errorf("storage: %w", err)
	}
	r, err := reconcile.New(reconcile.Config{Projection: p, Store: st,
		Concurrency: cfg.Collector.Concurrency, Logger: log})
	if err != nil {
		p.Close()
		return nil, nil, err
	}
	return r, func() { p.Close() }, nil
}

// daemonDown reports whether err means that nothing listens at the address.
func daemonDown(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// fetch calls the daemon and decodes its JSON answer into out.
func fetch(ctx context.Context, method, u string, out any) error {
	body, err := call(ctx, method, u)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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
			err := fetch(cmd.Context(), http.MethodGet, addr+daemon.VerifyPath, &drift)
			if err != nil && daemonDown(err) {
				r, done, oerr := o.reconciler(cmd.Context())
				if oerr != nil {
					return fmt.Errorf("daemon: %v; %w", err, oerr)
				}
				defer done()
				drift, err = r.Verify(cmd.Context())
			}
			if err != nil {
				return err
			}
			if err := printJSON(cmd.OutOrStdout(), drift); err != nil {
				return err
			}
			if !drift.Clean() {
				return fmt.Errorf("%w: %s", errDrift, drift.String())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
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
			u := addr + daemon.ReconcilePath + "?" + url.Values{"apply": {fmt.Sprint(apply)}}.Encode()
			if err := fetch(cmd.Context(), http.MethodPost, u, &drift); err != nil {
				return err
			}
			if err := printJSON(cmd.OutOrStdout(), drift); err != nil {
				return err
			}
			if !apply && !drift.Clean() {
				return fmt.Errorf("%w: %s (run with --apply to correct it)", errDrift, drift.String())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
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
			"FILE (a path on the daemon's machine), or to walk storage when the stream no longer starts at\n" +
			"sequence 1. When no daemon answers, walk storage here (--config / --storage-root).\n" +
			"A replayed FILE is bound to the stream it was replayed from, and refgc follows it only on that\n" +
			"stream; a walked FILE is bound to no stream, so refgc never follows it.\n" +
			"The live projection is not touched: to use a replayed FILE, stop refgc and put it in place of refs.db.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			var rep reconcile.RebuildReport
			err = fetch(cmd.Context(), http.MethodPost, addr+daemon.RebuildPath+"?"+url.Values{"out": {abs}}.Encode(), &rep)
			if err != nil && daemonDown(err) {
				r, done, oerr := o.reconciler(cmd.Context())
				if oerr != nil {
					return fmt.Errorf("daemon: %v; %w", err, oerr)
				}
				defer done()
				rep, err = r.Rebuild(cmd.Context(), abs, nil)
			}
			if err != nil {
				return err
			}
			if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
				return err
			}
			if rep.Differences > 0 {
				return fmt.Errorf("%w: %d nodes differ from the rebuilt projection", errDrift, rep.Differences)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
	cmd.Flags().StringVar(&out, "out", "", "where to write the rebuilt projection (must not exist)")
	_ = cmd.MarkFlagRequired("out")
	o.flags(cmd)
	return cmd
}
