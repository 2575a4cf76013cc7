package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/refgc/refgc/internal/daemon"
)

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "refgc.yml")
	if err := os.WriteFile(file, []byte(`
dataDir: /from/file
collector:
  grace: 3h
  retention: 48h
  untagged: keep
webhook:
  tokens: [old-token, new-token]
storage:
  s3:
    bucket: b
    region: r
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c daemon.Config)
	}{
		{"defaults", nil, nil, func(t *testing.T, c daemon.Config) {
			if c.Collector.Grace != time.Hour || c.Collector.Interval != time.Minute || c.NATS.Listen != "127.0.0.1:4222" {
				t.Errorf("%+v", c)
			}
		}},
		{"file over defaults", []string{"--config", file}, nil, func(t *testing.T, c daemon.Config) {
			if c.DataDir != "/from/file" || c.Collector.Grace != 3*time.Hour || c.Collector.Untagged != "keep" || c.Storage["s3"] == nil ||
				!slices.Equal(c.Webhook.Tokens, []string{"old-token", "new-token"}) {
				t.Errorf("%+v", c)
			}
		}},
		{"env over file", []string{"--config", file}, map[string]string{"REFGC_GRACE": "5h", "REFGC_WEBHOOK_TOKEN": "tok", "REFGC_WEBHOOK_TOKENS": "x, y"},
			func(t *testing.T, c daemon.Config) {
				if c.Collector.Grace != 5*time.Hour || c.Webhook.Token != "tok" || c.Collector.Retention != 48*time.Hour ||
					!slices.Equal(c.Webhook.Tokens, []string{"x", "y"}) {
					t.Errorf("%+v", c)
				}
			}},
		{"partition from flags and env", []string{"--partition", "d1", "--digest-partitions", "4"}, map[string]string{"REFGC_REPO_PARTITIONS": "3"},
			func(t *testing.T, c daemon.Config) {
				if c.Partition != (daemon.PartitionConfig{Name: "d1", Repos: 3, Digests: 4}) {
					t.Errorf("%+v", c.Partition)
				}
			}},
		{"flags over env", []string{"--config", file, "--grace", "7h", "--storage-root", "/srv/reg", "--webhook-tokens", "z"},
			map[string]string{"REFGC_GRACE": "5h", "REFGC_WEBHOOK_TOKENS": "x"},
			func(t *testing.T, c daemon.Config) {
				fs, _ := c.Storage["filesystem"].(map[string]any)
				if c.Collector.Grace != 7*time.Hour || fs["rootdirectory"] != "/srv/reg" || !slices.Equal(c.Webhook.Tokens, []string{"z"}) {
					t.Errorf("%+v", c)
				}
			}},
		{"config file from env", nil, map[string]string{"REFGC_CONFIG": file}, func(t *testing.T, c daemon.Config) {
			if c.DataDir != "/from/file" {
				t.Errorf("%+v", c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("REFGC_INSECURE", "true") // serve's default address takes other machines' requests
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cmd := newServe()
			var got daemon.Config
			cmd.RunE = nil
			cfg := daemon.Defaults()
			var f, root string
			cmd.ResetFlags()
			serveFlags(cmd.Flags(), &cfg, &f, &root)
			if err := cmd.Flags().Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if err := resolve(cmd, &cfg, &f, &root); err != nil {
				t.Fatal(err)
			}
			got = cfg
			tt.check(t, got)
		})
	}
	t.Run("invalid", func(t *testing.T) {
		cmd := newServe()
		cfg := daemon.Defaults()
		var f, root string
		cmd.ResetFlags()
		serveFlags(cmd.Flags(), &cfg, &f, &root)
		if err := cmd.Flags().Parse([]string{"--untagged", "sometimes"}); err != nil {
			t.Fatal(err)
		}
		if err := resolve(cmd, &cfg, &f, &root); err == nil {
			t.Fatal("no error for --untagged sometimes")
		}
	})
}

// `refgc dev` reads its flags through the same last layer as serve: the
// command line first, then REFGC_<FLAG>.
func TestDevFlagsFromEnvironment(t *testing.T) {
	t.Setenv("REFGC_GRACE", "7m")
	t.Setenv("REFGC_ADDR", "127.0.0.1:9999")
	cmd := newDev()
	if err := cmd.ParseFlags([]string{"--addr", "127.0.0.1:8181"}); err != nil {
		t.Fatal(err)
	}
	if err := setFlags(cmd.Flags(), changedFlags(cmd.Flags())); err != nil {
		t.Fatal(err)
	}
	grace, _ := cmd.Flags().GetDuration("grace")
	addr, _ := cmd.Flags().GetString("addr")
	if grace != 7*time.Minute || addr != "127.0.0.1:8181" {
		t.Fatalf("grace %s addr %s: want the environment's grace and the command line's address", grace, addr)
	}
}
