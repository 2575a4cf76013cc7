// Package daemon wires refgc's parts into one process: the event log on NATS
// JetStream (an embedded server or an external one), the follower that folds
// it into the reference-count projection, the Distribution webhook that feeds
// it, the collector loop, and the HTTP surface (webhook, metrics, health,
// admin).
//
// Invariants:
//   - Nothing here reads flags, files or the environment: a Config is given.
//   - At most one collector or reconcile pass runs at a time, whether
//     started by a loop or by an admin endpoint.
//   - Once the follower stops with eventlog.ErrCursorGap (the log no longer
//     reaches the projection's cursor) or eventlog.ErrUndecodable (the log
//     holds an event this refgc cannot read) the projection is stale: no
//     collector pass runs again in this process, and /readyz says why (the
//     webhook is still served, so notifications keep reaching the log)
//     until an operator upgrades or rebuilds the projection and restarts.
//   - Shutdown stops in dependency order: HTTP first (no new events), then
//     the collector and the follower, then the projection is closed and
//     the NATS connection and the embedded server are stopped.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofrs/flock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/distribution"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/prom"
	"github.com/refgc/refgc/refcount"
	"github.com/refgc/refgc/store"
)

// ProjectionFile is the projection's file name under the data directory.
const ProjectionFile = "refs.db"

// ErrNoStorage is returned by collection and restore when the daemon was
// started without a storage section.
var ErrNoStorage = errors.New("daemon: no registry storage configured")

// ErrNotLeader is returned for a pass that changes storage asked of a
// standby: only the elected instance collects.
var ErrNotLeader = errors.New("daemon: this instance is a standby, not the active collector")

// IsLeader reports whether this instance is the active collector (always,
// without HA).
func (d *Daemon) IsLeader() bool { return d.leader == nil || d.leader.IsLeader() }

// Daemon is a running refgc.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	emb    *eventlog.Embedded
	nc     *nats.Conn
	js     jetstream.JetStream
	lock   *flock.Flock // the data directory's
	proj   *refcount.Projection
	fol    *eventlog.Follower
	pub    *eventlog.Publisher
	store  *store.Driver
	col    *collector.Collector
	jslog  *eventlog.JetStreamLog
	stream jetstream.Stream
	rec    *reconcile.Reconciler // nil without storage
	reg    *prometheus.Registry
	gauges *gauges

	adminUnauthorized prometheus.Counter
	leader            *eventlog.Leader            // nil without HA: always the leader
	part              refcount.Partition          // the share of the registry this instance holds
	relay             *eventlog.Relay             // a repository partition's; nil otherwise
	barrierWait       func(context.Context) error // a digest partition's; nil otherwise
	intents           *collector.KVIntents        // nil without HA
	started           time.Time                   // on the daemon's clock
	ln                net.Listener
	srv               *http.Server

	passMu sync.Mutex // one pass at a time

	cancel      context.CancelFunc
	wg          sync.WaitGroup
	followerErr atomic.Pointer[error]
	followerUp  atomic.Bool
	halted      atomic.Pointer[string] // why collection stopped for good
	done        chan struct{}
	doneOnce    sync.Once
	shutOnce    sync.Once
	shutErr     error
}

// Start starts every part and begins serving HTTP on cfg.Addr. On error
// whatever was started is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, now: cfg.Now, done: make(chan struct{})}
	d.part, _ = cfg.Partition.partition() // validated
	if d.log == nil {
		if d.log, err = NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel); err != nil {
			return nil, err
		}
	}
	if d.now == nil {
		d.now = time.Now
	}
	d.started = d.now()
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("daemon: data dir: %w", err)
	}
	d.reg = prometheus.NewRegistry()
	prom.Register(d.reg, collectors.NewGoCollector())
	prom.Register(d.reg, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.adminUnauthorized = prom.Register(d.reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_admin_unauthorized_total",
		Help: "Admin requests refused for a missing or wrong token."}))

	// The data directory's lock is taken first, so that a second instance
	// on the same directory stops before it starts an embedded NATS server
	// on the live store, or replaces a projection with a snapshot.
	if err := d.lockDataDir(); err != nil {
		return nil, err
	}
	if err := d.startLog(ctx); err != nil {
		return nil, err
	}
	if err := d.loadSnapshot(ctx); err != nil {
		return nil, err
	}
	if err := d.openProjection(); err != nil {
		return nil, err
	}
	reader, err := d.startCollecting(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.serve(reader); err != nil {
		return nil, err
	}
	d.log.Info("refgc started", "addr", d.ln.Addr().String(), "nats", d.nc.ConnectedUrlRedacted(),
		"dataDir", cfg.DataDir, "grace", cfg.Collector.Grace, "retention", cfg.Collector.Retention,
		"untagged", cfg.Collector.Untagged, "interval", cfg.Collector.Interval, "dryRun", cfg.Collector.DryRun)
	return d, nil
}

// startLog connects to the event log (an embedded NATS server unless an
// external one is configured), ensures its stream and creates the
// publisher. closeLog undoes it.
func (d *Daemon) startLog(ctx context.Context) (err error) {
	cfg := d.cfg
	if err := d.connect(ctx); err != nil {
		return err
	}
	if d.stream, err = eventlog.EnsureStream(ctx, d.js, eventlog.StreamConfig{Replicas: cfg.NATS.Replicas,
		MaxAge: cfg.NATS.MaxAge, MaxBytes: cfg.NATS.MaxBytes}); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.pub, err = eventlog.NewPublisher(d.js, eventlog.PublisherConfig{Registerer: d.reg})
	if err != nil {
		return fmt.Errorf("daemon: publisher: %w", err)
	}
	return nil
}

// closeLog closes the NATS connection and stops the embedded server.
func (d *Daemon) closeLog() {
	if d.nc != nil {
		d.nc.Close()
	}
	if d.emb != nil {
		d.emb.Shutdown()
	}
}

// ErrDataDirInUse is returned (wrapped) by Start when another process
// holds the projection of the data directory.
var ErrDataDirInUse = errors.New("daemon: the data directory is in use by another refgc")

// LockFile is the file in the data directory that an instance holds
// locked while it runs.
const LockFile = "refgc.lock"

// lockDataDir locks the data directory for this process (an advisory
// lock on LockFile, released by the operating system if the process
// dies). closeProjection releases it.
func (d *Daemon) lockDataDir() error {
	path := filepath.Join(d.cfg.DataDir, LockFile)
	lock := flock.New(path)
	locked, err := lock.TryLock()
	if err != nil {
		return fmt.Errorf("daemon: lock %s: %w", path, err)
	}
	if !locked {
		return fmt.Errorf("%w: %s is locked (stop the other instance, or give each instance its own --data-dir)", ErrDataDirInUse, path)
	}
	d.lock = lock
	return nil
}

// openProjection opens the projection (a snapshot may just have been
// put in its place), the follower that feeds it from the log, and the Log
// the collector and the reconciler write through. closeProjection undoes
// it.
func (d *Daemon) openProjection() (err error) {
	cfg := d.cfg
	path := filepath.Join(cfg.DataDir, ProjectionFile)
	d.proj, err = refcount.Open(path, refcount.Options{
		Untagged: refcount.Policy(cfg.Collector.Untagged), Grace: cfg.Collector.Grace,
		Retention: cfg.Collector.Retention, NoSync: cfg.NoSync,
		TimeMachine: cfg.Collector.TimeMachine, TimeMachineRepos: cfg.Collector.TimeMachineRepos,
		Partition: d.part,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w: %s is locked (stop the other instance, or give each instance its own --data-dir)", ErrDataDirInUse, path)
	}
	if err != nil {
		return fmt.Errorf("daemon: projection: %w", err)
	}
	if err := d.newRelay(context.Background()); err != nil {
		return err
	}
	d.fol, err = eventlog.NewFollower(d.js, eventlog.FollowerConfig{
		Cursor: d.proj.Cursor,
		Bind:   d.proj.BindStream,
		Apply: func(b []events.Record) error {
			_, err := d.proj.Apply(b)
			if err == nil && d.relay != nil {
				d.relay.Kick()
			}
			return err
		},
		Logger: d.log, Registerer: d.reg,
	})
	if err != nil {
		return fmt.Errorf("daemon: follower: %w", err)
	}
	d.jslog = &eventlog.JetStreamLog{Publisher: d.pub, Follower: d.fol}
	return nil
}

// closeProjection closes the projection and releases the data
// directory's lock.
func (d *Daemon) closeProjection() {
	if d.proj != nil {
		if err := d.proj.Close(); err != nil {
			d.log.Error("close projection", "err", err)
		}
	}
	if d.lock != nil {
		if err := d.lock.Unlock(); err != nil {
			d.log.Error("unlock data directory", "err", err)
		}
	}
}

// startCollecting opens the storage, the collector and the reconciler
// (when storage is configured; the collector alone with
// Collector.OwnersOnly), and the leader election (with HA). It returns
// how the webhook reads manifests. Nothing here needs closing:
// the loops stop with the daemon's context.
func (d *Daemon) startCollecting(ctx context.Context) (_ distribution.ManifestReader, err error) {
	cfg := d.cfg
	var reader distribution.ManifestReader
	if cfg.Storage != nil {
		if err := checkStorageRoot(cfg.Storage); err != nil {
			return nil, err
		}
		d.store, err = store.FromConfig(ctx, cfg.Storage, store.WithLogger(d.log), store.WithRegisterer(d.reg))
		if err != nil {
			return nil, fmt.Errorf("daemon: storage: %w", err)
		}
		reader = collector.StoreManifestReader{Store: d.store}
	} else if cfg.Webhook.RegistryURL != "" {
		reader = &distribution.RegistryManifestReader{BaseURL: cfg.Webhook.RegistryURL,
			Token: cfg.Webhook.RegistryToken, Username: cfg.Webhook.RegistryUser, Password: cfg.Webhook.RegistryPassword}
	}
	switch {
	case cfg.Storage == nil && !cfg.Collector.OwnersOnly:
		d.log.Warn("no storage configured: events are recorded, nothing is collected")
		return reader, d.startElection(ctx)
	case cfg.Storage == nil:
		d.log.Warn("owners only: no registry storage; every object is deleted through its owner, " +
			"and the reconcile, verify and rebuild passes against storage are off")
	}
	if cfg.HA.Enabled {
		// A new leader finishes or undoes what the last one left.
		if d.intents, err = collector.NewKVIntents(ctx, d.js, collector.DefaultIntentBucket+cfg.Partition.suffix(), cfg.NATS.Replicas); err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
	}
	if d.barrierWait, err = d.barrier(ctx); err != nil {
		return nil, err
	}
	d.col, err = d.newCollector(cfg.Collector.DryRun, d.reg)
	if err != nil {
		return nil, err
	}
	if d.store != nil {
		if d.rec, err = d.newReconciler(d.jslog, d.reg); err != nil {
			return nil, err
		}
	}
	return reader, d.startElection(ctx)
}

// startElection starts the leader election (with HA) and the leader gauge.
func (d *Daemon) startElection(ctx context.Context) (err error) {
	cfg := d.cfg
	if cfg.HA.Enabled {
		id := cfg.HA.ID
		if id == "" {
			host, _ := os.Hostname()
			id = fmt.Sprintf("%s-%d", host, os.Getpid())
		}
		d.leader, err = eventlog.NewLeader(ctx, d.js, eventlog.LeaderConfig{ID: id, TTL: cfg.HA.TTL, Key: "collector" + cfg.Partition.suffix(),
			Replicas: cfg.NATS.Replicas, Logger: d.log})
		if err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
	}
	prom.Register(d.reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "refgc_leader",
		Help: "1 while this instance is the active collector."}, func() float64 {
		if d.IsLeader() {
			return 1
		}
		return 0
	}))
	return nil
}

// checkStorageRoot refuses a filesystem storage whose root directory does
// not exist: walked, it would look like an empty registry (and a reconcile
// would find the projection "matching" it), when it is most likely not the
// registry's storage at all.
func checkStorageRoot(section map[string]any) error {
	name, params, err := store.DriverConfig(section)
	if err != nil || name != "filesystem" {
		return nil // FromConfig reports a bad section
	}
	root, _ := params["rootdirectory"].(string)
	if root == "" {
		return fmt.Errorf("%w: filesystem storage without rootdirectory (the registry's default is /var/lib/registry: name it)", ErrConfig)
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: storage root %s is not a directory (is it the registry's storage?): %v", ErrConfig, root, err)
	}
	return nil
}

// serve creates the webhook and the HTTP server, and starts the
// follower, the gauges, the election, the reconcile and collector loops
// and the server. The loops stop with the daemon's context; closeServing
// closes what serve opened.
func (d *Daemon) serve(reader distribution.ManifestReader) (err error) {
	cfg := d.cfg
	var hook http.Handler // none with OwnersOnly: no Distribution registry
	if !cfg.Collector.OwnersOnly {
		var pulls distribution.PullFilter
		if cfg.Webhook.PullHeartbeat >= 0 {
			pulls = d.proj
		}
		hook, err = distribution.NewWebhook(distribution.WebhookConfig{
			Sink: d.pub, Token: cfg.Webhook.Token, Tokens: cfg.Webhook.Tokens, MaxBodyBytes: cfg.Webhook.MaxBodyBytes,
			Now: d.now, Translate: distribution.TranslateOptions{Reader: reader, TagExpiry: cfg.Collector.ExpireTags},
			Pulls: pulls, PullHeartbeat: cfg.Webhook.PullHeartbeat, Registerer: d.reg, Logger: d.log,
		})
		if err != nil {
			return fmt.Errorf("daemon: webhook: %w", err)
		}
		if !cfg.Webhook.authenticated() {
			d.log.Warn("webhook token empty: notifications are not authenticated")
		}
	}
	if cfg.AdminToken == "" {
		d.log.Warn("admin token empty: the admin endpoints are open to whoever reaches " + cfg.Addr)
	}
	var native http.Handler
	if len(cfg.Native.Sources) > 0 {
		maxBody := cfg.Native.MaxBodyBytes
		if maxBody <= 0 {
			maxBody = cfg.Webhook.MaxBodyBytes
		}
		native, err = distribution.NewNativeHandler(distribution.NativeConfig{Sink: d.pub, Sources: cfg.Native.Sources,
			MaxBodyBytes: maxBody, Now: d.now, Registerer: d.reg, Logger: d.log})
		if err != nil {
			return fmt.Errorf("%w: native: %w", ErrConfig, err)
		}
	}
	d.gauges = newGauges(d.reg, d)

	d.ln, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("daemon: listen: %w", err)
	}
	d.srv = &http.Server{Handler: d.routes(hook, native), ReadHeaderTimeout: 10 * time.Second}

	runCtx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.followerUp.Store(true)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := d.fol.Run(runCtx)
		d.followerUp.Store(false)
		if err != nil && haltsCollection(err) && runCtx.Err() == nil {
			d.followerErr.Store(&err)
			d.halt(runCtx, err)
			return
		}
		if err != nil {
			d.followerErr.Store(&err)
			d.log.Error("follower stopped", "err", err)
			d.finish()
		}
	}()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.gauges.loop(runCtx, cfg.StatsInterval)
	}()
	if d.leader != nil {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			_ = d.leader.Run(runCtx)
		}()
	}
	d.startSnapshots(runCtx)
	d.startRelay(runCtx)
	if d.rec != nil {
		if err := d.startReconcile(runCtx); err != nil {
			return err
		}
	}
	if d.col != nil && cfg.Collector.Interval > 0 {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.collectLoop(runCtx, cfg.Collector.Interval)
		}()
	}
	go func() {
		if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("http server", "err", err)
			d.finish()
		}
	}()
	return nil
}

// closeServing closes the listener if the server never took it over.
func (d *Daemon) closeServing() {
	if d.ln != nil && d.srv == nil {
		_ = d.ln.Close()
	}
}

func (d *Daemon) connect(ctx context.Context) error {
	cfg := d.cfg.NATS
	url := cfg.URL
	if url == "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return fmt.Errorf("%w: nats listen: %w", ErrConfig, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return fmt.Errorf("%w: nats listen port: %w", ErrConfig, err)
		}
		d.emb, err = eventlog.StartEmbedded(eventlog.EmbeddedConfig{
			StoreDir: filepath.Join(d.cfg.DataDir, "nats"), Host: host, Port: p,
			Token: cfg.Token, Logger: d.log.With("component", "nats"),
		})
		if err != nil {
			return fmt.Errorf("daemon: embedded nats: %w", err)
		}
		url = d.emb.ClientURL()
	}
	nc, err := connectRetry(ctx, url, eventlog.ConnectOptions{
		Token: cfg.Token, User: cfg.User, Password: cfg.Password, CredsFile: cfg.CredsFile,
		NKeySeedFile: cfg.NKeyFile, TLSCAFile: cfg.TLSCA, TLSCertFile: cfg.TLSCert, TLSKeyFile: cfg.TLSKey,
		Name: "refgc", Logger: d.log.With("component", "nats-client"),
	}, d.log)
	if err != nil {
		return fmt.Errorf("daemon: nats: %w", err)
	}
	d.nc = nc
	d.js, err = jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("daemon: jetstream: %w", err)
	}
	return nil
}

func (d *Daemon) newCollector(dryRun bool, reg prometheus.Registerer) (*collector.Collector, error) {
	cc := d.cfg.Collector
	owners, err := d.owners()
	if err != nil {
		return nil, err
	}
	var storage collector.Storage // a nil *store.Driver must not become a non-nil interface
	if d.store != nil {
		storage = d.store
	}
	c, err := collector.New(collector.Config{
		Projection: d.proj, Storage: storage, Log: d.jslog, Now: d.now, Owners: owners,
		BatchSize: cc.BatchSize, RoundTime: cc.RoundTime, Concurrency: cc.Concurrency, RateLimit: cc.RateLimit,
		QuietAfter: cc.QuietAfter, Started: d.started, DryRun: dryRun, ExpireTags: cc.ExpireTags, Intents: d.intentStore(), Source: "refgc", Logger: d.log, Registerer: reg,
		Dirs: d.emptyDirs(), Barrier: d.barrierWait,
		Reconcile: d.liftPauses(),
	})
	if err != nil {
		return nil, fmt.Errorf("daemon: collector: %w", err)
	}
	return c, nil
}

// liftPauses is how a pass lifts pauses: a reconcile of the paused
// repositories. It is called inside a pass, which holds passMu: the
// reconciler runs without taking it again. A digest partition has none:
// its pauses go when the repository partitions have reconciled.
func (d *Daemon) liftPauses() func(ctx context.Context, repos []string) error {
	if d.part.Role == refcount.RoleDigests {
		return nil
	}
	return func(ctx context.Context, repos []string) error {
		if d.rec == nil {
			return d.liftPausesWithoutStorage(ctx, repos)
		}
		drift, err := d.rec.ReconcileRepos(ctx, repos)
		if err == nil && !drift.Clean() {
			d.log.Warn("reconcile to lift a pause corrected drift", "drift", drift.String())
		}
		return err
	}
}

// emptyDirs is the store's remover of empty directories: the filesystem
// driver's only (a nil *store.EmptyDirs must not become a non-nil
// interface).
func (d *Daemon) emptyDirs() collector.EmptyDirs {
	if d.store == nil || d.store.EmptyDirs() == nil {
		return nil
	}
	return d.store.EmptyDirs()
}

// intentStore is where intents are shared, if anywhere (a nil
// *KVIntents must not become a non-nil interface).
func (d *Daemon) intentStore() collector.IntentStore {
	if d.intents == nil {
		return nil
	}
	return d.intents
}

func (d *Daemon) collectLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if !d.IsLeader() {
			// A standby: it follows the log, and collects once it leads.
		} else if _, err := d.Collect(ctx, false); errors.Is(err, collector.ErrPaused) {
			d.log.Warn("collection paused until a reconcile", "err", err)
		} else if err != nil && ctx.Err() == nil {
			d.log.Error("collector pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Collect runs one collector pass now (a dry run if dryRun, or if the
// daemon runs in dry-run mode) and returns its report.
func (d *Daemon) Collect(ctx context.Context, dryRun bool) (collector.Report, error) {
	if d.col == nil {
		return collector.Report{}, ErrNoStorage
	}
	if why := d.halted.Load(); why != nil {
		return collector.Report{}, fmt.Errorf("%w: %s", ErrCollectionHalted, *why)
	}
	if !dryRun && !d.cfg.Collector.DryRun && !d.IsLeader() {
		return collector.Report{}, ErrNotLeader
	}
	c := d.col
	if dryRun && !d.cfg.Collector.DryRun {
		var err error
		if c, err = d.newCollector(true, nil); err != nil {
			return collector.Report{}, err
		}
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	if why := d.halted.Load(); why != nil { // halted while waiting for the lock
		return collector.Report{}, fmt.Errorf("%w: %s", ErrCollectionHalted, *why)
	}
	rep, err := c.Pass(ctx)
	if err == nil && (rep.Unlinked > 0 || rep.Purged > 0 || rep.Errors > 0) {
		d.log.Info("collector pass", "unlinked", rep.Unlinked, "purged", rep.Purged, "unlinkedBytes", rep.UnlinkedBytes, "purgedBytes", rep.PurgedBytes,
			"refused", rep.Refused, "errors", rep.Errors, "dryRun", dryRun || d.cfg.Collector.DryRun)
	}
	return rep, err
}

// Restore brings back an unlinked manifest revision (see collector.Restore).
func (d *Daemon) Restore(ctx context.Context, repo string, dg string) (collector.Restored, error) {
	if d.store == nil {
		return collector.Restored{}, ErrNoStorage
	}
	parsed, err := parseDigest(dg)
	if err != nil {
		return collector.Restored{}, err
	}
	d.passMu.Lock()
	defer d.passMu.Unlock()
	return d.col.Restore(ctx, repo, parsed)
}

// URL is the daemon's HTTP base URL, such as http://127.0.0.1:8080.
func (d *Daemon) URL() string {
	a := d.ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// WebhookURL is where a registry posts its notifications.
func (d *Daemon) WebhookURL() string { return d.URL() + WebhookPath }

// NATSURL is the client URL of the NATS server in use.
func (d *Daemon) NATSURL() string { return d.nc.ConnectedUrlRedacted() }

// Projection is the daemon's projection (read it; do not close it).
func (d *Daemon) Projection() *refcount.Projection { return d.proj }

// Follower is the daemon's follower.
func (d *Daemon) Follower() *eventlog.Follower { return d.fol }

// Registry is the daemon's metrics registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Done is closed when the daemon stops on its own (a fatal error) or is shut down.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err returns the fatal error that stopped the follower, if any.
func (d *Daemon) Err() error {
	if p := d.followerErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *Daemon) finish() { d.doneOnce.Do(func() { close(d.done) }) }

// Shutdown stops HTTP (waiting for requests in flight until ctx ends), then
// the loops, the projection and NATS. It is safe to call more than once.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.shutOnce.Do(func() {
		if d.srv != nil {
			if err := d.srv.Shutdown(ctx); err != nil {
				d.shutErr = fmt.Errorf("daemon: http shutdown: %w", err)
				_ = d.srv.Close()
			}
		}
		d.close()
		d.finish()
		d.log.Info("refgc stopped")
	})
	return d.shutErr
}

// close stops whatever Start started, in reverse order.
func (d *Daemon) close() {
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
	d.closeServing()
	d.closeProjection()
	d.closeLog()
}
