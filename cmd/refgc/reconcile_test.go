package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// verify exits cleanly while storage and the projection agree, and with
// errDrift (exit status 1) and the drift printed once a push bypassed the
// daemon, through the daemon and, once it is stopped, offline;
// reconcile --apply mends it.
func TestVerifyReconcileRebuildCommands(t *testing.T) {
	dir, root := t.TempDir(), t.TempDir()
	d := startDaemonIn(t, dir, root)
	down := "http://127.0.0.1:1"

	drift := func(out string) reconcile.Drift {
		t.Helper()
		var dr reconcile.Drift
		if err := json.Unmarshal([]byte(out), &dr); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return dr
	}
	if out, err := runCmd(t, "verify", "--addr", d.URL()); err != nil || !drift(out).Clean() {
		t.Fatalf("verify of an empty registry: %q %v", out, err)
	}

	// A registry on the same storage, without notifications.
	regtest.Start(t, regtest.Options{Root: root}).PushRandom(t, "dark:v1", 1)
	out, err := runCmd(t, "verify", "--addr", d.URL())
	if !errors.Is(err, errDrift) || drift(out).Clean() {
		t.Fatalf("verify after an unnotified push: %q %v", out, err)
	}
	if out, err := runCmd(t, "reconcile", "--addr", d.URL()); !errors.Is(err, errDrift) || drift(out).Published != 0 {
		t.Fatalf("dry-run reconcile: %q %v", out, err)
	}
	if out, err := runCmd(t, "reconcile", "--apply", "--addr", d.URL()); err != nil || drift(out).Published == 0 {
		t.Fatalf("reconcile --apply: %q %v", out, err)
	}
	if out, err := runCmd(t, "verify", "--addr", d.URL()); err != nil || !drift(out).Clean() {
		t.Fatalf("verify after reconcile: %q %v", out, err)
	}
	// The daemon writes into its rebuild directory only; --addr may be
	// given as serve takes it, host:port.
	out, err = runCmd(t, "rebuild", "--addr", strings.TrimPrefix(d.URL(), "http://"), "--out", "r.db")
	var rep reconcile.RebuildReport
	if jerr := json.Unmarshal([]byte(out), &rep); err != nil || jerr != nil || rep.Differences != 0 || rep.From != "log" {
		t.Fatalf("rebuild through the daemon: %q %v", out, err)
	}
	rebuiltPath := rep.Path
	if rebuiltPath != filepath.Join(dir, "rebuilds", "r.db") {
		t.Errorf("rebuilt into %s", rebuiltPath)
	}
	if _, err := runCmd(t, "rebuild", "--addr", d.URL(), "--out", filepath.Join(t.TempDir(), "r.db")); err == nil ||
		!strings.Contains(err.Error(), "rebuild directory") {
		t.Errorf("rebuild outside the rebuild directory: %v", err)
	}
	// The rebuilt file follows the stream it was replayed from.
	rebuilt, err := refcount.Open(rebuiltPath, refcount.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got, gerr := rebuilt.StreamID()
	rebuilt.Close()
	if want, err := d.Projection().StreamID(); gerr != nil || err != nil || want == "" || got != want {
		t.Errorf("rebuilt projection bound to %q (%v), the live one to %q (%v)", got, gerr, want, err)
	}

	// Offline: the daemon is stopped, the projection and storage are read here.
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(t, "verify", "--addr", down, "--data-dir", dir, "--storage-root", root); err != nil || !drift(out).Clean() {
		t.Fatalf("offline verify: %q %v", out, err)
	}
	regtest.Start(t, regtest.Options{Root: root}).PushRandom(t, "dark:v2", 1)
	if out, err := runCmd(t, "verify", "--addr", down, "--data-dir", dir, "--storage-root", root); !errors.Is(err, errDrift) || drift(out).Clean() {
		t.Fatalf("offline verify after an unnotified push: %q %v", out, err)
	}
	out, err = runCmd(t, "rebuild", "--addr", down, "--data-dir", dir, "--storage-root", root, "--out", filepath.Join(t.TempDir(), "r.db"))
	rep = reconcile.RebuildReport{}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || !errors.Is(err, errDrift) || rep.From != "storage" || rep.Differences == 0 {
		t.Fatalf("offline rebuild: %q %v", out, err)
	}
	if _, err := runCmd(t, "verify", "--addr", down, "--data-dir", dir); err == nil {
		t.Fatal("offline verify without storage: no error")
	}
	// The offline commands load configuration as serve does: the
	// environment stands for the flags.
	t.Setenv("REFGC_DATA_DIR", dir)
	t.Setenv("REFGC_STORAGE_ROOT", root)
	if out, err := runCmd(t, "verify", "--addr", down); !errors.Is(err, errDrift) || drift(out).Clean() {
		t.Fatalf("offline verify configured by the environment: %q %v", out, err)
	}
}
