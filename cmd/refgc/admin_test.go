package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/refcount"
)

// startDaemon starts a daemon on loopback addresses, with its projection
// and the registry storage under temporary directories.
func startDaemon(t *testing.T) *daemon.Daemon {
	t.Helper()
	return startDaemonIn(t, t.TempDir(), t.TempDir())
}

// startDaemonIn starts a daemon with its data in dir and the registry
// storage at root.
func startDaemonIn(t *testing.T, dir, root string) *daemon.Daemon {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir = dir
	cfg.Addr = "127.0.0.1:0"
	cfg.NATS.Listen = "127.0.0.1:-1"
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
	cfg.Collector.Interval = 0
	cfg.NoSync = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d
}

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// dump reads the file when no daemon holds it, and asks the daemon when
// one does; collect and restore go through the daemon's admin endpoints.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	p, err := refcount.Open(dir+"/"+daemon.ProjectionFile, refcount.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if out, err := runCmd(t, "dump", "--data-dir", dir, "--addr", "http://127.0.0.1:1"); err != nil || out != "" {
		t.Fatalf("dump of an empty file: %q %v", out, err)
	}

	d := startDaemonIn(t, dir, t.TempDir())

	if out, err := runCmd(t, "dump", "--data-dir", dir, "--addr", d.URL()); err != nil || out != "" {
		t.Fatalf("dump through the daemon: %q %v", out, err)
	}
	if _, err := runCmd(t, "dump", "--data-dir", dir, "--addr", "http://127.0.0.1:1"); err == nil {
		t.Fatal("dump of a locked file without a daemon: no error")
	}
	out, err := runCmd(t, "collect", "--dry-run", "--addr", d.URL())
	if err != nil {
		t.Fatal(err)
	}
	var rep collector.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("collect: %q %v", out, err)
	}
	_, err = runCmd(t, "restore", "app@sha256:"+strings.Repeat("ab", 32), "--addr", d.URL())
	if err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("restore of an unknown revision: %v", err)
	}
	if _, err := runCmd(t, "restore", "no-digest", "--addr", d.URL()); err == nil {
		t.Fatal("restore without a digest: no error")
	}
}
