// Command refgc is the online garbage collector for OCI registries: `serve`
// runs the daemon, `dev` a registry and refgc in one process, and `dump`,
// `collect`, `restore`, `why`, `impact`, `verify`, `reconcile` and `rebuild`
// inspect and drive a running daemon. Exit status 1 means an error, or for
// verify, a dry-run reconcile and rebuild, a difference found (the report
// is printed first).
//
// Only this package reads flags, the environment and configuration files.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/refcount"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "refgc",
		Short:         "Online, incremental garbage collection for OCI registries",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newServe(), newDev(), newDump(), newCollect(), newRestore(), newWhy(), newImpact(), newUsage(), newDeadLetters(),
		newVerify(), newReconcile(), newRebuild())
	return root
}

func newServe() *cobra.Command {
	cfg := daemon.Defaults()
	var file, storageRoot string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: webhook, event log, projection, collector, metrics",
		Long: "Run the daemon. Settings come from flags, else REFGC_<FLAG> environment variables\n" +
			"(--collect-interval is REFGC_COLLECT_INTERVAL), else the YAML file of --config, else defaults.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, &cfg, &file, &storageRoot); err != nil {
				return err
			}
			log, err := daemon.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			d, err := daemon.Start(ctx, cfg)
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
			case <-d.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return errors.Join(d.Shutdown(sctx), d.Err())
		},
	}
	serveFlags(cmd.Flags(), &cfg, &file, &storageRoot)
	return cmd
}

func newDev() *cobra.Command {
	var dc daemon.DevConfig
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a Distribution registry and refgc in one process, to try refgc out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := setFlags(cmd.Flags(), changedFlags(cmd.Flags())); err != nil {
				return err
			}
			if os.Getenv("OTEL_TRACES_EXPORTER") == "" {
				os.Setenv("OTEL_TRACES_EXPORTER", "none")
			}
			log, err := daemon.NewLogger(os.Stderr, "text", "info")
			if err != nil {
				return err
			}
			dc.Logger = log
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			dev, err := daemon.StartDev(ctx, dc)
			if err != nil {
				return err
			}
			printNextSteps(cmd.OutOrStdout(), dev, dc)
			select {
			case <-ctx.Done():
			case <-dev.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return errors.Join(dev.Shutdown(sctx), dev.Err())
		},
	}
	f := cmd.Flags()
	f.StringVar(&dc.DataDir, "data-dir", "./data", "directory of the registry's storage (registry/) and refgc's state (refgc/)")
	f.StringVar(&dc.RegistryAddr, "registry-addr", "127.0.0.1:5000", "registry listen address")
	f.StringVar(&dc.Addr, "addr", "127.0.0.1:8080", "refgc listen address")
	f.StringVar(&dc.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS listen address")
	f.DurationVar(&dc.Grace, "grace", 2*time.Minute, "grace of pushes and unheld nodes")
	f.DurationVar(&dc.Retention, "retention", 10*time.Minute, "how long unlinked blob data stays restorable")
	f.DurationVar(&dc.Interval, "collect-interval", 30*time.Second, "time between collector passes")
	f.StringVar(&dc.Untagged, "untagged", string(refcount.PolicyDelete), "untagged manifests: delete or keep")
	return cmd
}

func printNextSteps(w io.Writer, dev *daemon.Dev, dc daemon.DevConfig) {
	r, u := dev.RegistryHost, dev.URL()
	fmt.Fprintf(w, `
refgc dev is running.
  registry  %[1]s   (storage %[3]s)
  refgc     %[2]s   (grace %[4]s, retention %[5]s, a pass every %[6]s)

Try it:
  crane copy alpine:3.20 %[1]s/demo:v1 --insecure     # or docker push / oras push
  crane copy alpine:3.21 %[1]s/demo:v1 --insecure     # move the tag: the old image becomes garbage
  curl -X DELETE http://%[1]s/v2/demo/manifests/$(crane digest %[1]s/demo:v1 --insecure)

Watch:
  curl -s %[2]s/v1/dump          # the reference graph, one JSON line per node
  curl -s %[2]s/v1/nodes         # counts by kind
  curl -s %[2]s/metrics | grep ^refgc_
  curl -s -X POST '%[2]s/v1/collect?dry_run=true'   # what a pass would delete now

After the grace, unreferenced manifests and layer links are unlinked; blob
data goes after the retention. Ctrl-C stops everything; state stays in %[7]s.
`, r, u, dev.StorageRoot, dc.Grace, dc.Retention, dc.Interval, dc.DataDir)
}

func newDump() *cobra.Command {
	var dataDir, addr string
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print the projection as JSON lines (from the file, or from the running daemon)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := refcount.Open(filepath.Join(dataDir, daemon.ProjectionFile),
				refcount.Options{ReadOnly: true, Timeout: 200 * time.Millisecond})
			if err == nil {
				defer p.Close()
				return p.Dump(cmd.OutOrStdout())
			}
			// Locked by the daemon (or absent here): ask the daemon.
			body, herr := call(cmd.Context(), http.MethodGet, addr+daemon.DumpPath)
			if herr != nil {
				return fmt.Errorf("open projection: %v; daemon: %w", err, herr)
			}
			defer body.Close()
			_, err = io.Copy(cmd.OutOrStdout(), body)
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("data-dir", "./data/refgc"), "the daemon's data directory")
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL, used when the file is locked")
	return cmd
}

func newCollect() *cobra.Command {
	var addr string
	var dry bool
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Ask the running daemon for one collector pass now, and print its report",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u := addr + daemon.CollectPath
			if dry {
				u += "?dry_run=true"
			}
			return callPrint(cmd, http.MethodPost, u)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only list what the pass would delete")
	return cmd
}

func newRestore() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "restore REPO@DIGEST",
		Short: "Re-link an unlinked manifest revision, its layers and its deleted tags",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, dg, ok := strings.Cut(args[0], "@")
			if !ok || repo == "" || dg == "" {
				return fmt.Errorf("want REPO@DIGEST, got %q", args[0])
			}
			q := url.Values{"repo": {repo}, "digest": {dg}}
			return callPrint(cmd, http.MethodPost, addr+daemon.RestorePath+"?"+q.Encode())
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
	return cmd
}

// refQuery is a command that asks the daemon's admin API about one node
// (REF: repo:tag, repo@digest, layer:repo@digest, blob:digest), or about
// everything when path takes no REF.
func refQuery(use, short, path string, takesRef bool) *cobra.Command {
	var addr string
	args := cobra.NoArgs
	if takesRef {
		args = cobra.ExactArgs(1)
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			u := addr + path
			if takesRef {
				if _, err := events.ParseRef(args[0]); err != nil {
					return err
				}
				u += "?" + url.Values{"ref": {args[0]}}.Encode()
			}
			return callPrint(cmd, http.MethodGet, u)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
	return cmd
}

func newWhy() *cobra.Command {
	return refQuery("why REF", "Show the chain of references that keeps an object alive (REF: repo:tag, repo@digest, layer:repo@digest, blob:digest)",
		daemon.WhyPath, true)
}

func newImpact() *cobra.Command {
	return refQuery("impact REF", "Show what deleting a tag (repo:tag) or a revision (repo@digest) would free, with bytes",
		daemon.ImpactPath, true)
}

func newUsage() *cobra.Command {
	return refQuery("usage", "Storage by repository, largest first: bytes linked, bytes no other repository links, bytes awaiting collection",
		daemon.UsagePath, false)
}

func newDeadLetters() *cobra.Command {
	var addr string
	var limit int
	cmd := &cobra.Command{
		Use:   "deadletters",
		Short: "The newest notifications the webhook could not turn into events, with the reason and the raw body",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callPrint(cmd, http.MethodGet, fmt.Sprintf("%s%s?limit=%d", addr, daemon.DeadPath, limit))
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("admin-addr", "http://127.0.0.1:8080"), "the daemon's base URL")
	cmd.Flags().IntVar(&limit, "limit", 20, "how many, newest last")
	return cmd
}

func envOr(flag, def string) string {
	if v, ok := os.LookupEnv(envName(flag)); ok {
		return v
	}
	return def
}

func call(ctx context.Context, method, u string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if tok := os.Getenv(envName("admin-token")); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp.Body, nil
}

func callPrint(cmd *cobra.Command, method, u string) error {
	body, err := call(cmd.Context(), method, u)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(cmd.OutOrStdout(), body)
	return err
}
