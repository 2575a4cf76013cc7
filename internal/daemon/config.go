package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// ErrConfig is returned (wrapped) for a configuration that cannot run.
var ErrConfig = errors.New("daemon: invalid configuration")

// Config is everything the daemon needs. Its YAML form is the file that
// `refgc serve --config` reads; its `storage` key takes a registry's
// `storage:` section as-is. The command layer fills it from the file, the
// REFGC_* environment and flags; this package reads none of them.
type Config struct {
	// DataDir holds the projection (refs.db) and the embedded NATS store.
	DataDir string `yaml:"dataDir"`
	// Addr is the HTTP listen address (webhook, metrics, health, admin).
	Addr string `yaml:"addr"`
	// AdminToken, if set, is the bearer token the admin endpoints (/v1/…
	// other than the webhook) require. Empty leaves them open, which
	// Validate accepts only on a loopback address or with Insecure.
	AdminToken string `yaml:"adminToken"`
	// Insecure allows a non-loopback Addr without a webhook token or an
	// admin token (anyone reaching the port could forge events then).
	Insecure bool `yaml:"insecure"`
	// AdminTokenFile names a file holding the admin token (read by the
	// command layer into AdminToken; a secret kept out of the process list
	// and the configuration file).
	AdminTokenFile string `yaml:"adminTokenFile"`
	// RebuildDir is the only directory POST /v1/rebuild writes into
	// (default: DataDir/rebuilds).
	RebuildDir string `yaml:"rebuildDir"`

	NATS NATSConfig `yaml:"nats"`

	// Storage is the registry's `storage:` section (filesystem, s3, gcs,
	// azure ...). Without it nothing is collected, unless
	// Collector.OwnersOnly says that every object has an owner.
	Storage map[string]any `yaml:"storage"`

	Webhook WebhookConfig `yaml:"webhook"`

	// Native configures POST /v1/events, where registries that publish
	// refgc's own events post them (docs/EVENTS.md).
	Native NativeConfig `yaml:"native"`

	Collector CollectorConfig `yaml:"collector"`

	// HA elects one active collector among instances sharing the event log.
	HA HAConfig `yaml:"ha"`

	// Partition places this instance on one partition of the graph.
	Partition PartitionConfig `yaml:"partition"`

	// Owners route, per event source, the objects a registry keeps in its
	// own database to that registry's deletion service (owners.go).
	Owners []OwnerConfig `yaml:"owners"`

	// StatsInterval is how often the projection's gauges are refreshed.
	StatsInterval time.Duration `yaml:"statsInterval"`
	// SnapshotInterval is how often the collecting instance publishes a
	// snapshot of its projection to the object store REFGC_SNAPSHOTS
	// (zero or negative: never), which a new instance loads instead of
	// replaying the log.
	SnapshotInterval time.Duration `yaml:"snapshotInterval"`
	// SnapshotKeep is how many snapshots the bucket keeps, the newest:
	// the points of a bounded log that dump --at can start from.
	SnapshotKeep int `yaml:"snapshotKeep"`
	// ReadyMaxLag is the largest follower lag /readyz accepts.
	ReadyMaxLag uint64 `yaml:"readyMaxLag"`

	// LogFormat is "json" or "text"; LogLevel one of debug, info, warn, error.
	LogFormat string `yaml:"logFormat"`
	LogLevel  string `yaml:"logLevel"`

	// Now is the collector's clock (tests); time.Now if nil.
	Now func() time.Time `yaml:"-"`
	// Logger overrides LogFormat/LogLevel (tests, dev); built from them if nil.
	Logger *slog.Logger `yaml:"-"`
	// NoSync skips fsync in the projection (tests and benchmarks only).
	NoSync bool `yaml:"-"`
}

// NATSConfig chooses between the embedded server and an external one.
type NATSConfig struct {
	// URL of an external NATS server; empty runs the embedded one.
	URL string `yaml:"url"`
	// Listen is the embedded server's address (host:port; port -1 picks a free one).
	Listen string `yaml:"listen"`
	// Token is required of clients by the embedded server, and sent to an
	// external one.
	Token     string `yaml:"token"`
	User      string `yaml:"user"`
	Password  string `yaml:"password"`
	CredsFile string `yaml:"credsFile"`
	NKeyFile  string `yaml:"nkeyFile"`
	TLSCA     string `yaml:"tlsCA"`
	TLSCert   string `yaml:"tlsCert"`
	TLSKey    string `yaml:"tlsKey"`
	// Replicas of the streams (external clusters only).
	Replicas int `yaml:"replicas"`
	// MaxAge and MaxBytes bound the event log (zero: unbounded); events
	// past them age out, and a new instance starts from the newest
	// snapshot (SnapshotInterval) instead of replaying from the start.
	MaxAge   time.Duration `yaml:"maxAge"`
	MaxBytes int64         `yaml:"maxBytes"`
}

// WebhookConfig configures the Distribution notification endpoint.
type WebhookConfig struct {
	// Token is the bearer token the registry sends; Tokens are more
	// accepted ones (to rotate a token without refusing the registry).
	// None at all disables authentication (development only).
	Token  string   `yaml:"token"`
	Tokens []string `yaml:"tokens"`
	// TokenFile names a file holding Token (read by the command layer).
	TokenFile string `yaml:"tokenFile"`
	// MaxBodyBytes bounds a notification (0: distribution.DefaultMaxBodySize).
	MaxBodyBytes int64 `yaml:"maxBodyBytes"`
	// PullHeartbeat: a pull whose content the projection holds with a fresh
	// lease is not published, except one per registry instance per
	// PullHeartbeat (0: distribution.DefaultPullHeartbeat); negative
	// publishes every pull.
	PullHeartbeat time.Duration `yaml:"pullHeartbeat"`
	// RegistryURL is where manifests are read for enrichment when no
	// storage is configured.
	RegistryURL      string `yaml:"registryURL"`
	RegistryToken    string `yaml:"registryToken"`
	RegistryUser     string `yaml:"registryUser"`
	RegistryPassword string `yaml:"registryPassword"`
}

// NativeConfig configures the native event endpoint. Without sources it
// is not served.
type NativeConfig struct {
	// Sources are the registries allowed to post, each with its tokens and
	// the kinds it may send.
	Sources []distribution.NativeSource `yaml:"sources"`
	// MaxBodyBytes bounds a batch (0: the webhook's limit).
	MaxBodyBytes int64 `yaml:"maxBodyBytes"`
}

// HAConfig configures leader election. Every instance follows the stream
// into its own projection (a hot standby); only the leader collects and
// runs applying reconcile passes.
type HAConfig struct {
	Enabled bool `yaml:"enabled"`
	// ID names this instance (default: the host name and process id).
	ID string `yaml:"id"`
	// TTL is how long a dead leader's lease lasts (default 15 s).
	TTL time.Duration `yaml:"ttl"`
}

// CollectorConfig configures the collector loop.
type CollectorConfig struct {
	// Interval between passes; zero or negative disables the loop (passes
	// then run only through POST /v1/collect).
	Interval  time.Duration `yaml:"interval"`
	Grace     time.Duration `yaml:"grace"`
	Retention time.Duration `yaml:"retention"`
	// ReconcileInterval is the time between reconcile passes, which compare
	// storage with the projection and publish corrections (default 24h;
	// zero or negative disables the periodic pass).
	ReconcileInterval time.Duration `yaml:"reconcileInterval"`
	// QuietAfter is how long a registry instance may send nothing before
	// its delivery watermark stops bounding collection (default
	// collector.DefaultQuietAfter). Keep it above the registry's
	// notification backoff.
	QuietAfter time.Duration `yaml:"quietAfter"`
	// TimeMachine is how long a deleted, expired or purged tag stays
	// recoverable, holding its manifest (0: not at all);
	// TimeMachineRepos overrides it per repository, or per namespace with
	// a key ending in "/".
	TimeMachine      time.Duration            `yaml:"timeMachine"`
	TimeMachineRepos map[string]time.Duration `yaml:"timeMachineRepos"`
	// ExpireTags opts in to tag expiry: the quay.expires-after label of a
	// pushed image (read from its config in storage) and the expiry of a
	// native tag.set are acted on, removing the tag when it passes.
	ExpireTags bool `yaml:"expireTags"`
	// OwnersOnly runs the collector without registry storage: every kind
	// of every event source is deleted through its owner (Owners, each
	// taking every kind, one for each native source). There is then no
	// reconcile, verify or rebuild against storage and no Distribution
	// webhook; a pause is lifted without a storage walk, the owners'
	// transactional checks guarding every deletion. It must be said
	// explicitly: a missing storage section alone collects nothing.
	OwnersOnly bool `yaml:"ownersOnly"`
	// Untagged is "delete" or "keep".
	Untagged    string  `yaml:"untagged"`
	Concurrency int     `yaml:"concurrency"`
	RateLimit   float64 `yaml:"rateLimit"`
	BatchSize   int     `yaml:"batchSize"`
	// RoundTime is about the longest a collector round's removals take
	// (collector.Config.RoundTime).
	RoundTime time.Duration `yaml:"roundTime"`
	DryRun    bool          `yaml:"dryRun"`
}

// Defaults returns the configuration `refgc serve` starts from.
func Defaults() Config {
	return Config{
		DataDir: "./data/refgc",
		Addr:    ":8080",
		NATS:    NATSConfig{Listen: "127.0.0.1:4222"},
		Collector: CollectorConfig{
			Interval: time.Minute, Grace: refcount.DefaultGrace, Retention: refcount.DefaultRetention,
			Untagged: string(refcount.PolicyDelete), Concurrency: collector.DefaultConcurrency, BatchSize: collector.DefaultBatchSize,
			RoundTime:         collector.DefaultRoundTime,
			ReconcileInterval: 24 * time.Hour, QuietAfter: collector.DefaultQuietAfter,
		},
		StatsInterval:    15 * time.Second,
		SnapshotInterval: DefaultSnapshotInterval,
		SnapshotKeep:     eventlog.DefaultSnapshotKeep,
		ReadyMaxLag:      1000,
		LogFormat:        "json",
		LogLevel:         "info",
	}
}

// DecodeYAML overlays the YAML document r on c: keys absent from the
// document keep their value. Unknown keys are refused.
func (c *Config) DecodeYAML(r io.Reader) error { return decodeYAML(r, c) }

// decodeYAML overlays the YAML document r on v, strictly.
func decodeYAML(r io.Reader, v any) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("daemon: read config: %w", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.SetStrict(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// Validate checks what can be checked before starting.
func (c *Config) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(f, a...)) }
	switch {
	case c.DataDir == "":
		return bad("dataDir is empty")
	case c.Addr == "":
		return bad("addr is empty")
	case c.Collector.Untagged != string(refcount.PolicyDelete) && c.Collector.Untagged != string(refcount.PolicyKeep):
		return bad("untagged must be delete or keep, not %q", c.Collector.Untagged)
	case c.Collector.Grace <= 0:
		return bad("grace must be positive")
	case c.Collector.Retention < 0:
		return bad("retention must not be negative")
	case c.Collector.TimeMachine < 0:
		return bad("the time machine window must not be negative")
	case c.Collector.Concurrency < 0 || c.Collector.BatchSize < 0 || c.Collector.RateLimit < 0 || c.Collector.RoundTime < 0:
		return bad("concurrency, batch size, round time and rate limit must not be negative")
	case math.IsNaN(c.Collector.RateLimit) || math.IsInf(c.Collector.RateLimit, 0):
		return bad("rate limit must be a number of operations per second (0: unlimited)")
	case c.LogFormat != "json" && c.LogFormat != "text":
		return bad("log format must be json or text, not %q", c.LogFormat)
	}
	if c.NATS.URL == "" && c.NATS.Listen == "" {
		return bad("nats: set url or listen")
	}
	if !c.Insecure && !Loopback(c.Addr) {
		var missing []string
		if !c.Webhook.authenticated() && !c.Collector.OwnersOnly {
			missing = append(missing, "no webhook token")
		}
		if c.AdminToken == "" {
			missing = append(missing, "no admin token")
		}
		if len(missing) > 0 {
			return bad("addr %q is reachable from other machines and there is %s: give both "+
				"(--webhook-token-file and --admin-token-file, or REFGC_WEBHOOK_TOKEN and REFGC_ADMIN_TOKEN), "+
				"listen on 127.0.0.1, or say --insecure", c.Addr, strings.Join(missing, " and "))
		}
	}
	if err := validateOwners(c.Owners); err != nil {
		return err
	}
	if _, err := c.Partition.partition(); err != nil {
		return err
	}
	if c.Partition.Name != "" && (len(c.Owners) > 0 || c.Collector.OwnersOnly) {
		return bad("partitioning works with registry storage only, not with owners")
	}
	if c.Partition.Name == "" && (c.Partition.Repos != 0 || c.Partition.Digests != 0) {
		return bad("partition counts without a partition: give --partition r<i> or d<j>, or no counts")
	}
	return c.validateOwnersOnly()
}

// authenticated reports whether the webhook requires a token.
func (w WebhookConfig) authenticated() bool {
	return w.Token != "" || slices.ContainsFunc(w.Tokens, func(s string) bool { return s != "" })
}

// Loopback reports whether the listen address addr (host:port) takes
// connections from this machine only: a loopback IP or "localhost". An
// empty host (all interfaces), another host name or a malformed address
// is not.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// rebuildDir is where POST /v1/rebuild may write.
func (c *Config) rebuildDir() string {
	if c.RebuildDir != "" {
		return c.RebuildDir
	}
	return filepath.Join(c.DataDir, "rebuilds")
}

// NewLogger builds the slog logger LogFormat and LogLevel describe.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: log level: %w", ErrConfig, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json", "":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: log format %q", ErrConfig, format)
}
