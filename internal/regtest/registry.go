// Package regtest is test support: an in-process CNCF Distribution v3.1.2
// registry behind httptest, client helpers over go-containerregistry that
// push, mount, delete and pull, and an oracle that computes, straight from
// the filesystem layout, what a correct garbage collector must keep.
//
// Invariants:
//   - A registry started here stores on the filesystem driver under its
//     Root (or on the s3 driver, Root mirroring its bucket), runs with
//     deletes enabled, without the blob descriptor cache and without
//     upload purging, so the storage is exactly what the API did.
//   - Everything is torn down by t.Cleanup. Notifications go through a relay
//     owned by this package, one per registry instance, whose Faults inject
//     delivery faults (late, lost, duplicated, refused, reordered between
//     instances, re-timestamped); once the test ends the relay acknowledges
//     and drops whatever it holds and whatever the registry still sends, so
//     the registry's notification goroutines (which App.Shutdown does not
//     stop) go idle instead of retrying forever.
//   - Every instance has its own instance id (source.instanceID) and
//     listener port (in source.addr). Instances started with the same Root
//     (Registry.Replica, or Start with that Root) are replicas over one
//     storage, as behind a load balancer.
//   - The oracle (Reachable, Present) reads the layout with package os only,
//     never through package store, so it can judge store and the collector
//     independently.
package regtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the driver tests use
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"     // and the s3 one, against internal/s3test
	"github.com/sirupsen/logrus"
)

// Options configures Start.
type Options struct {
	// Root is the filesystem storage root; default t.TempDir().
	Root string
	// NotifyURL, if set, receives the registry's notifications (with
	// includereferences true).
	NotifyURL string
	// NotifyToken, if set, is sent as "Authorization: Bearer <token>".
	NotifyToken string
	// Configure, if set, may change the configuration last, before start.
	Configure func(*configuration.Configuration)
	// S3, if set, are the parameters of the s3 storage driver the registry
	// stores with instead of the filesystem (see internal/s3test); Root
	// must then be a directory that mirrors the bucket, which the oracle
	// reads.
	S3 map[string]any
}

// Registry is a running in-process registry.
type Registry struct {
	// URL is the base URL, "http://127.0.0.1:<port>".
	URL string
	// Host is "127.0.0.1:<port>", for image references.
	Host string
	// Root is the filesystem storage root directory.
	Root string
	// Driver is a storage driver over the registry's storage (filesystem
	// on Root, or s3 with Options.S3), separate from the registry's own
	// instance.
	Driver storagedriver.StorageDriver
	// App is the registry application.
	App *handlers.App
	// Config is the configuration the registry runs with.
	Config *configuration.Configuration
	// InstanceID is this instance's id, source.instanceID in its
	// notifications. Replicas over the same Root have distinct ids.
	InstanceID string
	// Faults injects delivery faults into this instance's notifications
	// (see Faults); without Options.NotifyURL nothing reaches it.
	Faults *Faults

	server  *httptest.Server
	replica func(testing.TB) *Registry
}

var quietOnce sync.Once

// quiet lowers the registry's logrus level once per process: the registry
// logs every request, and every 404 at error level, which would drown test
// output. Failures still reach the test as HTTP statuses.
func quiet() {
	quietOnce.Do(func() { logrus.SetLevel(logrus.FatalLevel) })
}

// Config returns the configuration Start uses, before Options.Configure.
func Config(root string) *configuration.Configuration {
	cfg := &configuration.Configuration{}
	cfg.Log.Level = "warn"
	cfg.HTTP.Secret = "regtest-http-secret"
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": root},
		"delete":     configuration.Parameters{"enabled": true},
		// The app type-asserts nested maintenance values as map[any]any.
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}
	return cfg
}

// Start runs a registry for the duration of the test.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	if opts.Root == "" {
		opts.Root = t.TempDir()
	}
	cfg := Config(opts.Root)
	if opts.S3 != nil {
		delete(cfg.Storage, "filesystem")
		cfg.Storage["s3"] = configuration.Parameters(opts.S3)
	}
	if opts.NotifyURL != "" {
		cfg.Notifications = configuration.Notifications{
			EventConfig: configuration.Events{IncludeReferences: true},
			Endpoints:   []configuration.Endpoint{{Name: "refgc"}},
		}
	}
	if opts.Configure != nil {
		opts.Configure(cfg)
	}
	r := start(t, cfg, opts)
	r.replica = func(t testing.TB) *Registry { t.Helper(); return Start(t, opts) }
	return r
}

// StartFromConfigFile runs a registry from a registry configuration file
// (such as a deployment's), overriding what a test must own: storage goes
// to the filesystem driver under opts.Root, or to s3 with opts.S3 (the file's other storage keys,
// such as delete and maintenance, are kept), the listener is httptest's,
// and, if opts.NotifyURL is set, every notification endpoint of the file
// posts to it (with opts.NotifyToken, if set).
func StartFromConfigFile(t testing.TB, path string, opts Options) *Registry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	defer f.Close()
	cfg, err := configuration.Parse(f)
	if err != nil {
		t.Fatalf("regtest: parse %s: %v", path, err)
	}
	if opts.Root == "" {
		opts.Root = t.TempDir()
	}
	storage := configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": opts.Root}}
	if opts.S3 != nil {
		storage = configuration.Storage{"s3": configuration.Parameters(opts.S3)}
	}
	for k, v := range cfg.Storage {
		switch k {
		case "delete", "maintenance", "cache", "redirect", "tag":
			storage[k] = v
		}
	}
	cfg.Storage = storage
	cfg.HTTP.Addr = ""
	cfg.HTTP.Host = ""
	cfg.HTTP.TLS = configuration.TLS{}
	if cfg.HTTP.Secret == "" {
		cfg.HTTP.Secret = "regtest-http-secret"
	}
	if opts.NotifyURL == "" {
		cfg.Notifications.Endpoints = nil
	}
	if opts.Configure != nil {
		opts.Configure(cfg)
	}
	r := start(t, cfg, opts)
	r.replica = func(t testing.TB) *Registry { t.Helper(); return StartFromConfigFile(t, path, opts) }
	return r
}

func start(t testing.TB, cfg *configuration.Configuration, opts Options) *Registry {
	t.Helper()
	quiet()

	faults := newFaults(opts.NotifyURL)
	if opts.NotifyURL != "" {
		relayURL := faults.listen()
		t.Cleanup(faults.stop)
		for i := range cfg.Notifications.Endpoints {
			e := &cfg.Notifications.Endpoints[i]
			e.URL = relayURL
			if e.Headers == nil {
				e.Headers = http.Header{}
			}
			if opts.NotifyToken != "" {
				e.Headers.Set("Authorization", "Bearer "+opts.NotifyToken)
			}
			if e.Timeout == 0 {
				e.Timeout = 5 * time.Second
			}
			if e.Backoff == 0 {
				e.Backoff = 50 * time.Millisecond
			}
			if e.Threshold == 0 {
				e.Threshold = 1000
			}
		}
	}

	// The listener exists before the app, so that the app's source.addr
	// names this instance's port, as in a deployment.
	srv := httptest.NewUnstartedServer(nil)
	if cfg.HTTP.Addr == "" {
		cfg.HTTP.Addr = srv.Listener.Addr().String()
	}
	id := newInstanceID()
	app := handlers.NewApp(instanceContext{Context: context.Background(), id: id}, cfg)
	srv.Config.Handler = app
	srv.Start()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatalf("regtest: %v", err)
	}
	driver, params := "filesystem", map[string]any{"rootdirectory": opts.Root}
	if opts.S3 != nil {
		driver, params = "s3", opts.S3
	}
	drv, err := factory.Create(context.Background(), driver, params)
	if err != nil {
		t.Fatalf("regtest: %s driver: %v", driver, err)
	}
	r := &Registry{URL: srv.URL, Host: u.Host, Root: opts.Root, Driver: drv, App: app, Config: cfg,
		InstanceID: id, Faults: faults, server: srv}
	t.Cleanup(r.close)
	return r
}

// Replica starts another registry instance over r's storage, configured
// as r was (same options, or same configuration file), with its own
// listener, instance id, relay and Faults. To give the replica another
// endpoint or configuration, call Start with Options.Root set to r.Root.
func (r *Registry) Replica(t testing.TB) *Registry {
	t.Helper()
	return r.replica(t)
}

func (r *Registry) close() {
	r.server.CloseClientConnections()
	r.server.Close()
	_ = r.App.Shutdown()
}

// instanceContext gives the app its instance id, as the registry's own
// main does; the id is source.instanceID in every notification.
type instanceContext struct {
	context.Context
	id string
}

func (c instanceContext) Value(key any) any {
	if k, ok := key.(string); ok && k == "instance.id" {
		return c.id
	}
	return c.Context.Value(key)
}

// newInstanceID returns a random version 4 UUID.
func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
