package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// The filesystem storage driver registers itself.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// DevConfig configures Dev: a registry and refgc in one process, for a
// first try on one machine.
type DevConfig struct {
	// DataDir holds registry/ (the registry's storage) and refgc/.
	DataDir string
	// RegistryAddr is where the registry listens (127.0.0.1:5000).
	RegistryAddr string
	// Addr is where refgc listens (127.0.0.1:8080).
	Addr string
	// NATSListen is the embedded NATS address (127.0.0.1:4222; port -1 picks one).
	NATSListen string
	// Grace, Retention and Interval of the collector (2m, 10m, 30s if zero).
	Grace, Retention, Interval time.Duration
	// Untagged is the policy (delete if empty).
	Untagged string
	// Token authenticates the registry's notifications; random if empty.
	Token string
	// Now is the collector's clock (tests); time.Now if nil.
	Now    func() time.Time
	Logger *slog.Logger
}

// Dev is a running development setup.
type Dev struct {
	*Daemon
	// RegistryURL is the registry's base URL; RegistryHost its host:port.
	RegistryURL, RegistryHost string
	// StorageRoot is the registry's filesystem root.
	StorageRoot string
	app         *handlers.App
	srv         *http.Server
}

// StartDev starts refgc, then a Distribution registry on the same storage
// whose notifications go to refgc's webhook.
func StartDev(ctx context.Context, dc DevConfig) (*Dev, error) {
	if dc.DataDir == "" {
		dc.DataDir = "./data"
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&dc.Grace, 2*time.Minute)
	def(&dc.Retention, 10*time.Minute)
	def(&dc.Interval, 30*time.Second)
	if dc.RegistryAddr == "" {
		dc.RegistryAddr = "127.0.0.1:5000"
	}
	if dc.Addr == "" {
		dc.Addr = "127.0.0.1:8080"
	}
	if dc.NATSListen == "" {
		dc.NATSListen = "127.0.0.1:4222"
	}
	if dc.Untagged == "" {
		dc.Untagged = "delete"
	}
	if dc.Token == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		dc.Token = hex.EncodeToString(b)
	}
	root, err := filepath.Abs(filepath.Join(dc.DataDir, "registry"))
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	cfg := Defaults()
	cfg.DataDir = filepath.Join(dc.DataDir, "refgc")
	cfg.Addr = dc.Addr
	cfg.NATS.Listen = dc.NATSListen
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
	cfg.Webhook.Token = dc.Token
	cfg.Collector.Grace, cfg.Collector.Retention, cfg.Collector.Interval = dc.Grace, dc.Retention, dc.Interval
	cfg.Collector.Untagged = dc.Untagged
	cfg.StatsInterval = 5 * time.Second
	cfg.LogFormat = "text"
	cfg.Now = dc.Now
	cfg.Logger = dc.Logger
	d, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	dev := &Dev{Daemon: d, StorageRoot: root}
	if err := dev.startRegistry(ctx, dc, root); err != nil {
		_ = d.Shutdown(context.Background())
		return nil, err
	}
	return dev, nil
}

// devRegistryConfig is the registry configuration Dev runs: filesystem
// storage under root, deletes enabled, no blob descriptor cache (its
// answers can outlive collected data), no upload purging, and
// notifications with references to hookURL carrying the bearer token.
func devRegistryConfig(root, hookURL, token string) *configuration.Configuration {
	cfg := &configuration.Configuration{}
	cfg.Log.Level = "warn"
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	cfg.HTTP.Secret = hex.EncodeToString(b)
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": root},
		"delete":     configuration.Parameters{"enabled": true},
		// The registry type-asserts nested maintenance values as map[any]any.
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.Notifications = configuration.Notifications{
		EventConfig: configuration.Events{IncludeReferences: true},
		Endpoints: []configuration.Endpoint{{
			Name: "refgc", URL: hookURL, Timeout: 5 * time.Second, Threshold: 10, Backoff: time.Second,
			Headers: http.Header{"Authorization": {"Bearer " + token}},
		}},
	}
	return cfg
}

func (dev *Dev) startRegistry(ctx context.Context, dc DevConfig, root string) error {
	logrus.SetLevel(logrus.WarnLevel)
	ln, err := net.Listen("tcp", dc.RegistryAddr)
	if err != nil {
		return fmt.Errorf("daemon: registry listen: %w", err)
	}
	dev.app = handlers.NewApp(ctx, devRegistryConfig(root, dev.WebhookURL(), dc.Token))
	dev.srv = &http.Server{Handler: dev.app, ReadHeaderTimeout: 30 * time.Second}
	dev.RegistryHost = ln.Addr().String()
	dev.RegistryURL = "http://" + dev.RegistryHost
	go func() {
		if err := dev.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			dev.log.Error("registry server", "err", err)
		}
	}()
	return nil
}

// Shutdown stops the registry, then refgc.
func (dev *Dev) Shutdown(ctx context.Context) error {
	var errs []error
	if dev.srv != nil {
		errs = append(errs, dev.srv.Shutdown(ctx))
		errs = append(errs, dev.app.Shutdown())
	}
	errs = append(errs, dev.Daemon.Shutdown(ctx))
	return errors.Join(errs...)
}
