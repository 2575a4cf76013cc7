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

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events/eventlog"
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
	addOutputFlag(root)
	root.AddCommand(newServe(), newDev(), newDump(), newCollect(), newRestore(), newWhy(), newImpact(), newUsage(), newDeadLetters(),
		newVerify(), newReconcile(), newRebuild(), newHealth(), newPurge())
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
			warnSecretFlags(cmd.Flags(), log)
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
	dc := daemon.DevDefaults()
	var file, storageRoot string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a Distribution registry and refgc in one process, to try refgc out",
		Long: "Run a registry (filesystem storage under DATA_DIR/registry) and refgc (DATA_DIR/refgc) in one process.\n" +
			"Settings load as serve's do (flags, REFGC_<FLAG>, the YAML file of --config, defaults), with\n" +
			"shorter collection times, loopback addresses and a random webhook token by default.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolveInto(cmd, &dc, &dc.Config, &file, &storageRoot); err != nil {
				return err
			}
			if os.Getenv("OTEL_TRACES_EXPORTER") == "" {
				os.Setenv("OTEL_TRACES_EXPORTER", "none")
			}
			log, err := daemon.NewLogger(os.Stderr, dc.LogFormat, dc.LogLevel)
			if err != nil {
				return err
			}
			warnSecretFlags(cmd.Flags(), log)
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
	serveFlags(f, &dc.Config, &file, &storageRoot)
	f.Lookup("data-dir").Usage = "directory of the registry's storage (registry/) and refgc's state (refgc/)"
	f.Lookup("storage-root").Usage = "the registry's filesystem storage `root` (default: DATA_DIR/registry)"
	f.StringVar(&dc.RegistryAddr, "registry-addr", dc.RegistryAddr, "registry listen address")
	return cmd
}

func printNextSteps(w io.Writer, dev *daemon.Dev, dc daemon.DevConfig) {
	r, u := dev.RegistryHost, dev.URL()
	fmt.Fprintf(w, `
refgc dev is running.
  registry  %[1]s   (storage %[3]s)
  refgc     %[2]s   (grace %[4]s, retention %[5]s, a pass every %[6]s)
  webhook   token %[8]s (the registry sends it; any other registry needs it too)

Try it (nothing is fetched from the internet):
  echo one > one.txt && tar -cf one.tar one.txt
  crane append -f one.tar -t %[1]s/demo:v1 --insecure     # or: oras push --plain-http %[1]s/demo:v1 one.txt
  echo two > two.txt && tar -cf two.tar two.txt
  crane append -f two.tar -t %[1]s/demo:v1 --insecure     # move the tag: the first image becomes garbage
  curl -X DELETE http://%[1]s/v2/demo/manifests/$(crane digest %[1]s/demo:v1 --insecure)

Watch:
  refgc collect --dry-run --addr %[2]s     # what a pass would delete now
  refgc usage --addr %[2]s                 # storage by repository
  refgc why demo:v1 --addr %[2]s           # what keeps an object alive
  curl -s %[2]s/metrics | grep ^refgc_

After the grace, unreferenced manifests and layer links are unlinked; blob
data goes after the retention. Ctrl-C stops everything; state stays in %[7]s.
`, r, u, dev.StorageRoot, humanDuration(dc.Collector.Grace), humanDuration(dc.Collector.Retention),
		humanDuration(dc.Collector.Interval), dc.DataDir, dev.WebhookToken)
}

func newDump() *cobra.Command {
	var dataDir, addr, at string
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print the projection as JSON lines (from the file, or from the running daemon); --at SEQ|TIME as it was then",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if at != "" {
				return dumpAt(cmd, addr, at)
			}
			p, err := refcount.Open(filepath.Join(dataDir, daemon.ProjectionFile),
				refcount.Options{ReadOnly: true, Timeout: 200 * time.Millisecond})
			if err == nil {
				defer p.Close()
				return p.Dump(cmd.OutOrStdout())
			}
			// Locked by the daemon (or absent here): ask the daemon.
			body, herr := call(cmd.Context(), http.MethodGet, addr, daemon.DumpPath)
			if herr != nil {
				return fmt.Errorf("open projection: %v; daemon: %w", err, herr)
			}
			defer body.Close()
			_, err = io.Copy(cmd.OutOrStdout(), body)
			return err
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("data-dir", daemon.Defaults().DataDir), "the daemon's data directory")
	addrFlag(cmd, &addr)
	cmd.Flags().StringVar(&at, "at", "", "the graph as it was at this log sequence or RFC 3339 time (replayed by the daemon)")
	return cmd
}

// defaultAdminAddr is where the client commands look for the daemon.
const defaultAdminAddr = "http://127.0.0.1:8080"

// addrFlag adds --addr, the daemon's address (REFGC_ADMIN_ADDR).
func addrFlag(cmd *cobra.Command, addr *string) {
	cmd.Flags().StringVar(addr, "addr", envOr("admin-addr", defaultAdminAddr),
		"the daemon's address: a URL, or host:port as serve's --addr takes it")
}

// baseURL turns the --addr of a client command into a base URL: a URL is
// taken as it is, host:port (serve's --addr form) gets http://, and a
// host-less :port means this machine.
func baseURL(addr string) (string, error) {
	if !strings.Contains(addr, "://") {
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("--addr %q: want host:port or an http(s) URL", addr)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

func newCollect() *cobra.Command {
	var addr string
	var dry bool
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Ask the running daemon for one collector pass now, and print its report",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := daemon.CollectPath
			if dry {
				path += "?dry_run=true"
			}
			var rep collector.Report
			if err := fetch(cmd.Context(), http.MethodPost, addr, path, &rep); err != nil {
				return err
			}
			return render(cmd, rep, func(w io.Writer, r collector.Report) { collectTable(w, r, dry) })
		},
	}
	addrFlag(cmd, &addr)
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only list what the pass would delete")
	return cmd
}

func newRestore() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "restore REPO@DIGEST | REPO:TAG",
		Short: "Re-link an unlinked manifest revision, its layers and its deleted tags; or bring a tag back from the time machine",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := restoreQuery(args[0])
			if err != nil {
				return err
			}
			var res collector.Restored
			if err := fetch(cmd.Context(), http.MethodPost, addr, daemon.RestorePath+"?"+q.Encode(), &res); err != nil {
				return err
			}
			return render(cmd, res, restoreTable)
		},
	}
	addrFlag(cmd, &addr)
	return cmd
}

// refQuery is a command that asks the daemon's admin API about one node
// (REF: repo:tag, repo@digest, layer:repo@digest, blob:digest), or about
// everything when it takes no REF, and prints the answer, a T.
func refQuery[T any](use, short, path string, takesRef bool, table func(io.Writer, T)) *cobra.Command {
	var addr string
	args := cobra.NoArgs
	if takesRef {
		args = cobra.ExactArgs(1)
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			p := path
			if takesRef {
				if _, err := refArg(args[0]); err != nil {
					return err
				}
				p += "?" + url.Values{"ref": {args[0]}}.Encode()
			}
			var v T
			if err := fetch(cmd.Context(), http.MethodGet, addr, p, &v); err != nil {
				return err
			}
			return render(cmd, v, table)
		},
	}
	addrFlag(cmd, &addr)
	return cmd
}

func newWhy() *cobra.Command {
	return refQuery("why REF", "Show the chain of references that keeps an object alive (REF: repo:tag, repo@digest, layer:repo@digest, blob:digest)",
		daemon.WhyPath, true, whyTable)
}

func newImpact() *cobra.Command {
	return refQuery("impact REF", "Show what deleting a tag (repo:tag) or a revision (repo@digest) would free, with bytes",
		daemon.ImpactPath, true, impactTable)
}

func newUsage() *cobra.Command {
	return refQuery("usage", "Storage by repository, largest first: bytes linked, bytes no other repository links, bytes awaiting collection",
		daemon.UsagePath, false, usageTable)
}

func newDeadLetters() *cobra.Command {
	var addr string
	var limit int
	cmd := &cobra.Command{
		Use:   "deadletters",
		Short: "The newest notifications the webhook could not turn into events, with the reason and the raw body",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var dls []eventlog.StoredDeadLetter
			if err := fetch(cmd.Context(), http.MethodGet, addr, fmt.Sprintf("%s?limit=%d", daemon.DeadPath, limit), &dls); err != nil {
				return err
			}
			return render(cmd, dls, deadLettersTable)
		},
	}
	addrFlag(cmd, &addr)
	cmd.Flags().IntVar(&limit, "limit", 20, "how many, newest last")
	return cmd
}

func envOr(flag, def string) string {
	if v, ok := os.LookupEnv(envName(flag)); ok {
		return v
	}
	return def
}

// adminToken is the token the client commands send: REFGC_ADMIN_TOKEN, or
// the content of the file REFGC_ADMIN_TOKEN_FILE names.
func adminToken() (string, error) {
	if tok := os.Getenv(envName("admin-token")); tok != "" {
		return tok, nil
	}
	if f := os.Getenv(envName("admin-token-file")); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("%s: %w", envName("admin-token-file"), err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

// errDaemon is returned (wrapped) when the daemon answers with an error.
var errDaemon = errors.New("refgc answered")

// call sends a request to the daemon at addr (see baseURL) and returns the
// body of a 200 answer; other answers and an absent daemon become errors
// that say what to do.
func call(ctx context.Context, method, addr, path string) (io.ReadCloser, error) {
	base, err := baseURL(addr)
	if err != nil {
		return nil, err
	}
	tok, err := adminToken()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if daemonDown(err) {
			return nil, fmt.Errorf("no refgc answers at %s (is it running? give --addr or REFGC_ADMIN_ADDR): %w", base, err)
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		msg := strings.TrimSpace(string(b))
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			msg = "an admin token is required: set REFGC_ADMIN_TOKEN or REFGC_ADMIN_TOKEN_FILE to the daemon's"
		case http.StatusNotFound, http.StatusConflict, http.StatusBadRequest:
			msg = strings.TrimPrefix(msg, "daemon: ")
		}
		return nil, fmt.Errorf("%w %s: %s", errDaemon, resp.Status, msg)
	}
	return resp.Body, nil
}
