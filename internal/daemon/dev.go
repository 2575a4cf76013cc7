package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	"github.com/refgc/refgc/store"

	// The filesystem storage driver registers itself.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// DevConfig configures Dev: a registry and refgc in one process, for a
// first try on one machine. Its YAML form is the file of `refgc dev
// --config`: serve's keys, and registryAddr.
type DevConfig struct {
	// Config is refgc's configuration, but that DataDir holds registry/
	// (the registry's storage, unless Storage names a filesystem root) and
	// refgc/ (refgc's own data directory), and an empty webhook token is
	// replaced by a random one (Dev.WebhookToken).
	Config `yaml:",inline"`
	// RegistryAddr is where the registry listens.
	RegistryAddr string `yaml:"registryAddr"`
}

// DevDefaults returns the configuration `refgc dev` starts from: serve's
// defaults, on loopback addresses, with a short grace (2 min), retention
// (10 min) and interval (30 s) so that collection shows within minutes,
// and text logs.
func DevDefaults() DevConfig {
	c := Defaults()
	c.DataDir = "./data"
	c.Addr = "127.0.0.1:8080"
	c.Collector.Grace, c.Collector.Retention, c.Collector.Interval = 2*time.Minute, 10*time.Minute, 30*time.Second
	c.StatsInterval = 5 * time.Second
	c.LogFormat = "text"
	return DevConfig{Config: c, RegistryAddr: "127.0.0.1:5000"}
}

// DecodeYAML overlays the YAML document r on c, as Config.DecodeYAML does.
func (c *DevConfig) DecodeYAML(r io.Reader) error { return decodeYAML(r, c) }

// devStorageRoot is the filesystem root the dev registry serves: the one
// of a filesystem storage section, else DataDir/registry.
func (c *DevConfig) devStorageRoot() (string, error) {
	if c.Storage == nil {
		return filepath.Abs(filepath.Join(c.DataDir, "registry"))
	}
	name, params, err := store.DriverConfig(c.Storage)
	root, _ := params["rootdirectory"].(string)
	if err != nil || name != "filesystem" || root == "" {
		return "", fmt.Errorf("%w: refgc dev runs a registry on filesystem storage; give --storage-root or no storage", ErrConfig)
	}
	return filepath.Abs(root)
}

// Dev is a running development setup.
type Dev struct {
	*Daemon
	// RegistryURL is the registry's base URL; RegistryHost its host:port.
	RegistryURL, RegistryHost string
	// StorageRoot is the registry's filesystem root.
	StorageRoot string
	// WebhookToken is the token the registry sends with its notifications.
	WebhookToken string
	app          *handlers.App
	srv          *http.Server
}

// StartDev starts refgc, then a Distribution registry on the same storage
// whose notifications go to refgc's webhook.
func StartDev(ctx context.Context, dc DevConfig) (*Dev, error) {
	root, err := dc.devStorageRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	cfg := dc.Config
	cfg.DataDir = filepath.Join(dc.DataDir, "refgc")
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
	if !cfg.Webhook.authenticated() {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		cfg.Webhook.Token = hex.EncodeToString(b)
	}
	d, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	token := cfg.Webhook.Token
	if token == "" {
		token = cfg.Webhook.Tokens[slices.IndexFunc(cfg.Webhook.Tokens, func(s string) bool { return s != "" })]
	}
	dev := &Dev{Daemon: d, StorageRoot: root, WebhookToken: token}
	if err := dev.startRegistry(ctx, dc.RegistryAddr, root); err != nil {
		_ = d.Shutdown(context.Background())
		return nil, err
	}
	return dev, nil
}

// devRegistryConfig is the registry configuration Dev runs: filesystem
// storage under root, deletes enabled, no blob descriptor cache (its
// answers can outlive collected data), no upload purging, and
// notifications with references to hookURL carrying the bearer token.
func devRegistryConfig(root, hookURL, token string) (*configuration.Configuration, error) {
	// Parsed, so that every default the registry's parser sets (the
	// catalog's and tag list's page limits among them) is set.
	cfg, err := configuration.Parse(strings.NewReader("version: 0.1\nstorage: {inmemory: {}}\n"))
	if err != nil {
		return nil, fmt.Errorf("daemon: registry configuration: %w", err)
	}
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
	return cfg, nil
}

func (dev *Dev) startRegistry(ctx context.Context, addr, root string) error {
	logrus.SetLevel(logrus.WarnLevel)
	rc, err := devRegistryConfig(root, dev.WebhookURL(), dev.WebhookToken)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("daemon: registry listen: %w", err)
	}
	dev.app = handlers.NewApp(ctx, rc)
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
