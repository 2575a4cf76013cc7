package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

// startupConfig is a daemon on loopback addresses with its data and
// storage under temporary directories.
func startupConfig(t *testing.T) daemon.Config {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir, cfg.Addr, cfg.NATS.Listen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:-1"
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": t.TempDir()}}
	cfg.Collector.Interval, cfg.NoSync = 0, true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// freePort returns a loopback address nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestStartupRefusals(t *testing.T) {
	t.Run("second instance on the same data directory", func(t *testing.T) {
		cfg := startupConfig(t)
		d, err := daemon.Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
		// The second one would start its embedded NATS here, on the live
		// store: it must stop at the lock, before.
		second := cfg
		second.NATS.Listen = freePort(t)
		_, err = daemon.Start(context.Background(), second)
		if !errors.Is(err, daemon.ErrDataDirInUse) {
			t.Fatalf("second instance: %v", err)
		}
		if ln, lerr := net.Listen("tcp", second.NATS.Listen); lerr != nil {
			t.Errorf("the second instance left NATS listening: %v", lerr)
		} else {
			ln.Close()
		}
	})
	t.Run("storage root that does not exist", func(t *testing.T) {
		cfg := startupConfig(t)
		cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": filepath.Join(t.TempDir(), "absent")}}
		if _, err := daemon.Start(context.Background(), cfg); !errors.Is(err, daemon.ErrConfig) {
			t.Fatalf("absent storage root: %v", err)
		}
	})
	t.Run("embedded NATS port taken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cfg := startupConfig(t)
		cfg.NATS.Listen = ln.Addr().String()
		_, err = daemon.Start(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("NATS port taken: %v", err)
		}
	})
}

// An external NATS that is not up yet (compose starts everything at once)
// is waited for, with a log line that says so; refgc starts once it is up.
func TestStartWaitsForNATS(t *testing.T) {
	addr := freePort(t)
	var logs regtest.SyncBuffer
	cfg := startupConfig(t)
	cfg.NATS.URL = "nats://" + addr
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	type result struct {
		d   *daemon.Daemon
		err error
	}
	started := make(chan result, 1)
	go func() {
		d, err := daemon.Start(context.Background(), cfg)
		started <- result{d, err}
	}()
	regtest.WaitFor(t, "a log line saying refgc waits for NATS", func() bool {
		return strings.Contains(logs.String(), "waiting for NATS")
	})
	_, port, _ := net.SplitHostPort(addr)
	emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: atoi(t, port)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	r := <-started
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { _ = r.d.Shutdown(context.Background()) })
	if err := r.d.Ready(); err != nil && !strings.Contains(err.Error(), "follower") {
		t.Errorf("ready: %v", err)
	}

	// Giving up: the context ends while NATS stays away.
	ctx, cancel := context.WithCancel(context.Background())
	cfg2 := startupConfig(t)
	cfg2.NATS.URL = "nats://" + freePort(t)
	var logs2 regtest.SyncBuffer
	cfg2.Logger = slog.New(slog.NewTextHandler(&logs2, nil))
	done := make(chan error, 1)
	go func() { _, err := daemon.Start(ctx, cfg2); done <- err }()
	regtest.WaitFor(t, "the first wait", func() bool { return strings.Contains(logs2.String(), "waiting for NATS") })
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "gave up waiting for NATS") {
		t.Fatalf("start cancelled while waiting: %v", err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
