package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

func TestBaseURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"http://refgc:8080/", "http://refgc:8080"},
		{"127.0.0.1:8080", "http://127.0.0.1:8080"},
		{":8080", "http://127.0.0.1:8080"},
		{"https://refgc.example", "https://refgc.example"},
		{"ftp://x", ""},
		{"", ""},
	} {
		got, err := baseURL(tt.in)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("baseURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// A bad reference is explained in the terms it was typed in, without
// the event model's field paths.
func TestRefArgErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"Demo:v1", "repository names are lower case"},
		{"demo@sha256:abc", "invalid checksum digest length"},
		{"demo", "no tag, digest or kind"},
		{"blob:xyz", "invalid checksum digest format"},
	} {
		_, err := refArg(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "node.") ||
			strings.Contains(err.Error(), "invalid event") {
			t.Errorf("refArg(%q): %v", tt.in, err)
		}
	}
	if _, err := runCmd(t, "why", "Demo:v1", "--addr", "http://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "lower case") {
		t.Errorf("why Demo:v1: %v", err)
	}
}

// Every flag's help names a placeholder a user can type, not a piece of
// YAML (pflag takes a backquoted word of the usage as the placeholder).
func TestHelpPlaceholders(t *testing.T) {
	for _, c := range newRoot().Commands() {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, ": ") {
				t.Errorf("%s --%s: placeholder %q", c.Name(), f.Name, name)
			}
		})
	}
}

func TestTokenFiles(t *testing.T) {
	dir := t.TempDir()
	hook, admin := filepath.Join(dir, "hook"), filepath.Join(dir, "admin")
	if err := os.WriteFile(hook, []byte("hook-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(admin, []byte("admin-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(args ...string) (daemon.Config, error) {
		cmd := newServe()
		cfg := daemon.Defaults()
		var f, root string
		cmd.ResetFlags()
		serveFlags(cmd.Flags(), &cfg, &f, &root)
		if err := cmd.Flags().Parse(args); err != nil {
			t.Fatal(err)
		}
		err := resolve(cmd, &cfg, &f, &root)
		return cfg, err
	}
	cfg, err := load("--webhook-token-file", hook, "--admin-token-file", admin)
	if err != nil || cfg.Webhook.Token != "hook-secret" || cfg.AdminToken != "admin-secret" {
		t.Fatalf("tokens from files: %q %q %v", cfg.Webhook.Token, cfg.AdminToken, err)
	}
	t.Setenv("REFGC_ADMIN_TOKEN_FILE", admin)
	t.Setenv("REFGC_WEBHOOK_TOKEN", "from-env")
	if cfg, err = load(); err != nil || cfg.Webhook.Token != "from-env" || cfg.AdminToken != "admin-secret" {
		t.Fatalf("tokens from the environment: %q %q %v", cfg.Webhook.Token, cfg.AdminToken, err)
	}
	if _, err := load("--webhook-token-file", hook); err == nil {
		t.Error("a token given both directly and as a file: no error")
	}
	t.Setenv("REFGC_WEBHOOK_TOKEN", "")
	t.Setenv("REFGC_ADMIN_TOKEN_FILE", "")
	if _, err := load(); err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Errorf("serve on all interfaces without tokens: %v", err)
	}
	if _, err := load("--addr", "127.0.0.1:8080"); err != nil {
		t.Errorf("serve on loopback without tokens: %v", err)
	}
}

// The collect report is JSON for a pipe, and a table with human units
// for -o table; its duration is the pass's.
func TestCollectOutput(t *testing.T) {
	d := startDaemon(t)
	out, err := runCmd(t, "collect", "--dry-run", "--addr", d.URL())
	if err != nil {
		t.Fatal(err)
	}
	var rep collector.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Duration <= 0 {
		t.Fatalf("collect: %q %v", out, err)
	}
	for _, k := range []string{`"unlinkedBytes"`, `"purgedBytes"`, "\n  "} {
		if !strings.Contains(out, k) {
			t.Errorf("collect -o json: no %q in %s", k, out)
		}
	}
	out, err = runCmd(t, "collect", "--addr", d.URL(), "-o", "table")
	if err != nil || !strings.Contains(out, "purged") || !strings.Contains(out, "0 B") || !strings.Contains(out, "took") {
		t.Fatalf("collect -o table: %q %v", out, err)
	}
	if _, err := runCmd(t, "collect", "--addr", d.URL(), "-o", "yaml"); err == nil {
		t.Error("-o yaml: no error")
	}
	if _, err := runCmd(t, "usage", "--addr", d.URL(), "-o", "table"); err != nil {
		t.Error(err)
	}
}

func TestHumanUnits(t *testing.T) {
	if got := humanBytes(1536); got != "1.5 KiB" {
		t.Errorf("humanBytes: %s", got)
	}
	if got := humanDuration(1234567 * time.Microsecond); got != "1.2s" {
		t.Errorf("humanDuration: %s", got)
	}
}

// A running pass shows as a bar with what it has seen.
func TestShowProgress(t *testing.T) {
	var out regtest.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	poll := func(context.Context) (daemon.PassProgress, bool) {
		return daemon.PassProgress{Progress: reconcile.Progress{Running: true, Pass: "verify", Repositories: 3, Revisions: 40, Blobs: 10},
			Expected: 100}, true
	}
	go func() { defer close(stopped); showProgress(ctx, &out, poll) }()
	regtest.WaitFor(t, "the bar", func() bool { return strings.Contains(out.String(), "verify: 3 repositories, 40 revisions, 10 blobs") })
	cancel()
	<-stopped
	if !strings.Contains(out.String(), "50/100") {
		t.Errorf("bar: %q", out.String())
	}
}
