package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/refgc/refgc/internal/daemon"
)

// envName is the environment variable that stands for a flag:
// --collect-interval is REFGC_COLLECT_INTERVAL.
func envName(flag string) string {
	return "REFGC_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// serveFlags binds the serve flags to cfg, whose values are the defaults.
func serveFlags(fs *pflag.FlagSet, cfg *daemon.Config, file, storageRoot *string) {
	fs.StringVarP(file, "config", "c", "", "YAML configuration `file` (keys as in the README; storage: as in the registry's config)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the projection and the embedded NATS store")
	fs.StringVar(&cfg.Addr, "addr", cfg.Addr, "HTTP listen address (webhook, /metrics, /healthz, /readyz, admin)")
	fs.StringVar(storageRoot, "storage-root", "", "registry filesystem storage `root` (shorthand for a filesystem storage: section)")

	fs.StringVar(&cfg.NATS.URL, "nats", cfg.NATS.URL, "external NATS URL; empty runs an embedded server")
	fs.StringVar(&cfg.NATS.Listen, "nats-listen", cfg.NATS.Listen, "embedded NATS listen address")
	fs.StringVar(&cfg.NATS.Token, "nats-token", cfg.NATS.Token, "NATS token (required by the embedded server, sent to an external one)")
	fs.StringVar(&cfg.NATS.User, "nats-user", cfg.NATS.User, "NATS user")
	fs.StringVar(&cfg.NATS.Password, "nats-password", cfg.NATS.Password, "NATS password")
	fs.StringVar(&cfg.NATS.CredsFile, "nats-creds", cfg.NATS.CredsFile, "NATS credentials file (.creds)")
	fs.StringVar(&cfg.NATS.NKeyFile, "nats-nkey", cfg.NATS.NKeyFile, "NATS nkey seed file")
	fs.StringVar(&cfg.NATS.TLSCA, "nats-tls-ca", cfg.NATS.TLSCA, "CA file for the NATS server's certificate")
	fs.StringVar(&cfg.NATS.TLSCert, "nats-tls-cert", cfg.NATS.TLSCert, "client certificate file for NATS")
	fs.StringVar(&cfg.NATS.TLSKey, "nats-tls-key", cfg.NATS.TLSKey, "client key file for NATS")
	fs.IntVar(&cfg.NATS.Replicas, "nats-replicas", cfg.NATS.Replicas, "stream replicas (JetStream clusters)")
	fs.DurationVar(&cfg.NATS.MaxAge, "stream-max-age", cfg.NATS.MaxAge, "events older than this age out of the log (0: kept for ever)")
	fs.Int64Var(&cfg.NATS.MaxBytes, "stream-max-bytes", cfg.NATS.MaxBytes, "the log's oldest events age out past this size (0: unbounded)")
	fs.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", cfg.SnapshotInterval, "how often the collecting instance publishes a snapshot of its projection, which new instances load (0: never)")
	fs.IntVar(&cfg.SnapshotKeep, "snapshot-keep", cfg.SnapshotKeep, "how many snapshots to keep, the newest: dump --at starts from the newest at or before its point")
	fs.BoolVar(&cfg.HA.Enabled, "ha", cfg.HA.Enabled, "elect one active collector among instances sharing the event log; the others are hot standbys")
	fs.StringVar(&cfg.HA.ID, "ha-id", cfg.HA.ID, "this instance's name in the election (default: host name and pid)")
	fs.DurationVar(&cfg.HA.TTL, "ha-ttl", cfg.HA.TTL, "how long a dead leader's lease lasts (0: 15s)")
	fs.StringVar(&cfg.Partition.Name, "partition", cfg.Partition.Name, "hold one partition of the graph: r<i> (repositories) or d<j> (blob data), of --repo-partitions and --digest-partitions (docs/PARTITIONING.md; default: the whole registry)")
	fs.IntVar(&cfg.Partition.Repos, "repo-partitions", cfg.Partition.Repos, "how many repository partitions the registry is split into (with --partition)")
	fs.IntVar(&cfg.Partition.Digests, "digest-partitions", cfg.Partition.Digests, "how many digest partitions the registry is split into, at most 256 (with --partition)")
	fs.DurationVar(&cfg.Partition.BarrierTimeout, "partition-barrier-timeout", cfg.Partition.BarrierTimeout, "how long a digest partition's purge round waits for the repository partitions' statements (0: 30s)")

	fs.BoolVar(&cfg.Insecure, "insecure", cfg.Insecure, "allow listening beyond this machine without a webhook token and an admin token")
	fs.StringVar(&cfg.RebuildDir, "rebuild-dir", cfg.RebuildDir, "the only directory POST /v1/rebuild writes into (default: DATA_DIR/rebuilds)")
	fs.StringVar(&cfg.Webhook.Token, "webhook-token", cfg.Webhook.Token, "bearer token the registry sends with notifications (visible in ps: prefer --webhook-token-file or REFGC_WEBHOOK_TOKEN)")
	fs.StringVar(&cfg.Webhook.TokenFile, "webhook-token-file", cfg.Webhook.TokenFile, "file holding the webhook bearer token")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", cfg.AdminTokenFile, "file holding the admin bearer token")
	fs.Var(csvList{&cfg.Webhook.Tokens}, "webhook-tokens", "more accepted webhook bearer tokens, comma-separated (to rotate the token without refusing the registry)")
	fs.StringVar(&cfg.AdminToken, "admin-token", cfg.AdminToken, "bearer token the admin endpoints require (visible in ps: prefer --admin-token-file or REFGC_ADMIN_TOKEN)")
	fs.Int64Var(&cfg.Webhook.MaxBodyBytes, "webhook-max-body", cfg.Webhook.MaxBodyBytes, "largest notification body in bytes (0: 32 MiB); a larger one is dead-lettered")
	fs.DurationVar(&cfg.Webhook.PullHeartbeat, "pull-heartbeat", cfg.Webhook.PullHeartbeat, "publish a pull of content held with a fresh lease only once per registry instance per this much registry time (0: 1s; negative: publish every pull)")
	fs.StringVar(&cfg.Webhook.RegistryURL, "registry-url", cfg.Webhook.RegistryURL, "registry to read manifests from when no storage is configured")
	fs.StringVar(&cfg.Webhook.RegistryToken, "registry-token", cfg.Webhook.RegistryToken, "bearer token for --registry-url")
	fs.StringVar(&cfg.Webhook.RegistryUser, "registry-user", cfg.Webhook.RegistryUser, "basic-auth user for --registry-url")
	fs.StringVar(&cfg.Webhook.RegistryPassword, "registry-password", cfg.Webhook.RegistryPassword, "basic-auth password for --registry-url")

	fs.DurationVar(&cfg.Collector.Interval, "collect-interval", cfg.Collector.Interval, "time between collector passes (0: only on POST /v1/collect)")
	fs.DurationVar(&cfg.Collector.Grace, "grace", cfg.Collector.Grace, "how long a push protects content, and an unheld node waits")
	fs.DurationVar(&cfg.Collector.Retention, "retention", cfg.Collector.Retention, "how long unlinked blob data stays restorable")
	fs.DurationVar(&cfg.Collector.TimeMachine, "time-machine", cfg.Collector.TimeMachine, "how long a deleted, expired or purged tag stays restorable, holding its manifest (0: not at all; per repository in the file: collector.timeMachineRepos)")
	fs.BoolVar(&cfg.Collector.ExpireTags, "expire-tags", cfg.Collector.ExpireTags, "remove tags whose expiry passed: the quay.expires-after image label, or a native tag.set's expiry")
	fs.BoolVar(&cfg.Collector.OwnersOnly, "owners-only", cfg.Collector.OwnersOnly, "collect without registry storage: every kind of every source is deleted through its owner (owners:); no reconcile against storage, no Distribution webhook")
	fs.StringVar(&cfg.Collector.Untagged, "untagged", cfg.Collector.Untagged, "untagged manifests: delete or keep")
	fs.IntVar(&cfg.Collector.Concurrency, "concurrency", cfg.Collector.Concurrency, "storage operations in flight")
	fs.Float64Var(&cfg.Collector.RateLimit, "rate-limit", cfg.Collector.RateLimit, "storage operations per second (0: unlimited)")
	fs.IntVar(&cfg.Collector.BatchSize, "batch-size", cfg.Collector.BatchSize, "most candidates per collector round")
	fs.DurationVar(&cfg.Collector.RoundTime, "round-time", cfg.Collector.RoundTime, "about the longest a collector round's removals take: rounds take as many candidates as the last one's removal rate lets go in this time, up to --batch-size")
	fs.DurationVar(&cfg.Collector.QuietAfter, "quiet-after", cfg.Collector.QuietAfter, "how long a registry instance may send no notification before it stops holding collection back")
	fs.DurationVar(&cfg.Collector.ReconcileInterval, "reconcile-interval", cfg.Collector.ReconcileInterval, "time between reconcile passes comparing storage with the projection (0: only at start when needed and on POST /v1/reconcile)")
	fs.BoolVar(&cfg.Collector.DryRun, "dry-run", cfg.Collector.DryRun, "report what would be deleted, delete nothing")

	fs.DurationVar(&cfg.StatsInterval, "stats-interval", cfg.StatsInterval, "refresh period of the projection gauges")
	fs.Uint64Var(&cfg.ReadyMaxLag, "ready-max-lag", cfg.ReadyMaxLag, "largest follower lag /readyz accepts")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "json or text")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
}

// csvList is a flag value of comma-separated strings. Set replaces the
// list, so that a value given again (flag over environment over file) wins.
type csvList struct{ p *[]string }

func (c csvList) String() string {
	if c.p == nil {
		return ""
	}
	return strings.Join(*c.p, ",")
}

func (c csvList) Set(v string) error {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	*c.p = out
	return nil
}

func (c csvList) Type() string { return "strings" }

// resolve loads the serve configuration (loadConfig), reads the token
// files and validates it.
func resolve(cmd *cobra.Command, cfg *daemon.Config, file, storageRoot *string) error {
	return resolveInto(cmd, cfg, cfg, file, storageRoot)
}

// resolveInto is resolve for a document (the file's form) that holds cfg,
// such as `refgc dev`'s.
func resolveInto(cmd *cobra.Command, doc configDocument, cfg *daemon.Config, file, storageRoot *string) error {
	if err := loadInto(cmd.Flags(), doc, cfg, file, storageRoot); err != nil {
		return err
	}
	if err := readTokenFiles(cfg); err != nil {
		return err
	}
	return cfg.Validate()
}

// configDocument is what a configuration file decodes into.
type configDocument interface{ DecodeYAML(io.Reader) error }

// loadConfig is the one configuration loader, of serve, dev and of the
// offline commands (verify, rebuild). It applies the precedence flags >
// environment > file > defaults: fs holds flags bound to cfg, whose values
// are the defaults and any flags given. The file (*file, else
// REFGC_CONFIG) is laid over cfg; then every flag of fs is set again from
// the command line or, failing that, from its environment variable; and a
// storage root (--storage-root, REFGC_STORAGE_ROOT) stands for a
// filesystem storage section.
func loadConfig(fs *pflag.FlagSet, cfg *daemon.Config, file, storageRoot *string) error {
	return loadInto(fs, cfg, cfg, file, storageRoot)
}

// loadInto is loadConfig with the file decoded into doc, which holds cfg.
func loadInto(fs *pflag.FlagSet, doc configDocument, cfg *daemon.Config, file, storageRoot *string) error {
	given := changedFlags(fs)
	if *file == "" {
		*file = os.Getenv(envName("config"))
	}
	if *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		err = doc.DecodeYAML(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("config %s: %w", *file, err)
		}
	}
	if err := setFlags(fs, given); err != nil {
		return err
	}
	if *storageRoot != "" {
		cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": *storageRoot}}
	}
	return nil
}

// readTokenFiles sets the webhook and admin tokens from their files. A
// token given both ways is refused: which one wins would be a guess.
func readTokenFiles(cfg *daemon.Config) error {
	for _, t := range []struct {
		name, file string
		token      *string
	}{
		{"webhook token", cfg.Webhook.TokenFile, &cfg.Webhook.Token},
		{"admin token", cfg.AdminTokenFile, &cfg.AdminToken},
	} {
		if t.file == "" {
			continue
		}
		if *t.token != "" {
			return fmt.Errorf("%w: the %s is given both directly and as a file (%s)", daemon.ErrConfig, t.name, t.file)
		}
		b, err := os.ReadFile(t.file)
		if err != nil {
			return fmt.Errorf("%w: %s file: %w", daemon.ErrConfig, t.name, err)
		}
		if *t.token = strings.TrimSpace(string(b)); *t.token == "" {
			return fmt.Errorf("%w: %s file %s is empty", daemon.ErrConfig, t.name, t.file)
		}
	}
	return nil
}

// secretFlags are the flags whose value is a secret: on the command line
// any user of the machine can read it (ps, /proc).
var secretFlags = []string{"webhook-token", "webhook-tokens", "admin-token", "nats-token", "nats-password",
	"registry-token", "registry-password"}

// warnSecretFlags logs a warning for each secret given on the command line.
func warnSecretFlags(fs *pflag.FlagSet, log *slog.Logger) {
	for _, name := range secretFlags {
		if f := fs.Lookup(name); f != nil && f.Changed {
			log.Warn("a secret on the command line is visible to every user of this machine (ps); use a file or the environment instead",
				"flag", "--"+name, "env", envName(name))
		}
	}
}

// setFlags sets every flag of fs (but --config) again: from the command
// line (given) or, failing that, from its environment variable. It is the
// last layer of loadConfig, and all of the configuration of `refgc dev`,
// which reads no file.
func setFlags(fs *pflag.FlagSet, given map[string]string) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Name == "config" {
			return
		}
		v, ok := given[f.Name]
		if !ok {
			v, ok = os.LookupEnv(envName(f.Name))
		}
		if ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s: %w", f.Name, e)
			}
		}
	})
	return err
}

// changedFlags returns the flags given on the command line, by name.
func changedFlags(fs *pflag.FlagSet) map[string]string {
	given := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			given[f.Name] = f.Value.String()
		}
	})
	return given
}
