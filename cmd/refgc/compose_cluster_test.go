package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/distribution/v3/configuration"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/store"
)

// loadComposeFile loads a compose file of the repository's root with the
// compose specification's own loader.
func loadComposeFile(t *testing.T, name string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(repoRoot, name)},
		cli.WithWorkingDirectory(repoRoot), cli.WithResolvedPaths(true), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

// refgcConfig decodes and validates deploy/<name> as `refgc serve` does,
// with the tokens that the environment gives.
func refgcConfig(t *testing.T, name string) daemon.Config {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := daemon.Defaults()
	if err := cfg.DecodeYAML(f); err != nil {
		t.Fatal(err)
	}
	// The tokens come from the environment (the compose files set them).
	cfg.Webhook.Token, cfg.AdminToken = "from-the-environment", "from-the-environment"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// registryConfig parses deploy/<name> as the registry does.
func registryConfig(t *testing.T, name string) *configuration.Configuration {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := configuration.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestComposeClusterFile checks the clustered deployment: three NATS
// nodes routed to each other, two refgc instances in HA mode with three
// replicas, a registry that notifies both, over one storage volume.
func TestComposeClusterFile(t *testing.T) {
	p := loadComposeFile(t, "docker-compose.cluster.yml")
	want := []string{"nats1", "nats2", "nats3", "prometheus", "refgc-a", "refgc-b", "registry"}
	if got := sortedCopy(p.ServiceNames()); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	svc := func(name string) types.ServiceConfig { return p.Services[name] } // present: checked above

	t.Run("three NATS nodes in one JetStream cluster", func(t *testing.T) {
		conf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nats-cluster.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(conf), fmt.Sprintf("max_payload: %d", events.MaxEncodedSize+64<<10)) {
			t.Error("deploy/nats-cluster.conf must let the largest event through")
		}
		names := map[string]bool{}
		for _, n := range []string{"nats1", "nats2", "nats3"} {
			s := svc(n)
			if !strings.HasPrefix(s.Image, "nats:2") || !slices.Contains(s.Command, "-js") {
				t.Errorf("%s: image %q command %v", n, s.Image, s.Command)
			}
			i := slices.Index(s.Command, "--name")
			if i < 0 || i+1 == len(s.Command) || names[s.Command[i+1]] {
				t.Errorf("%s: no name of its own in %v", n, s.Command)
			} else {
				names[s.Command[i+1]] = true
			}
			if !strings.Contains(string(conf), "nats://"+n+":6222") {
				t.Errorf("no route to %s", n)
			}
			if m, ok := mountOf(s, "/data"); !ok || m.Type != types.VolumeTypeVolume {
				t.Errorf("%s: no volume of its own at /data", n)
			}
			if m, ok := mountOf(s, "/etc/nats/nats.conf"); !ok || filepath.Base(m.Source) != "nats-cluster.conf" {
				t.Errorf("%s: not configured by nats-cluster.conf", n)
			}
		}
	})
	t.Run("refgc instances: HA, three replicas, the shared storage", func(t *testing.T) {
		cfg := refgcConfig(t, "refgc-cluster.yml")
		if !cfg.HA.Enabled || cfg.NATS.Replicas != 3 {
			t.Errorf("refgc-cluster.yml: ha %+v, replicas %d", cfg.HA, cfg.NATS.Replicas)
		}
		for _, n := range []string{"nats1", "nats2", "nats3"} {
			if !strings.Contains(cfg.NATS.URL, "nats://"+n+":4222") {
				t.Errorf("refgc does not know %s: %q", n, cfg.NATS.URL)
			}
		}
		if _, err := store.FromConfig(context.Background(), cfg.Storage); err != nil {
			t.Errorf("storage section: %v", err)
		}
		reg, ok := mountOf(svc("registry"), "/var/lib/registry")
		if !ok {
			t.Fatal("registry has no storage volume")
		}
		ids := map[string]bool{}
		for _, n := range []string{"refgc-a", "refgc-b"} {
			s := svc(n)
			if s.Build == nil || filepath.Base(s.Build.Dockerfile) != "Dockerfile" {
				t.Errorf("%s: build %+v", n, s.Build)
			}
			if m, ok := mountOf(s, "/etc/refgc/refgc.yml"); !ok || filepath.Base(m.Source) != "refgc-cluster.yml" {
				t.Errorf("%s: not configured by refgc-cluster.yml", n)
			}
			if m, ok := mountOf(s, "/var/lib/registry"); !ok || m.Source != reg.Source {
				t.Errorf("%s: storage %+v, registry's %+v", n, m, reg)
			}
			id := s.Environment["REFGC_HA_ID"]
			if id == nil || ids[*id] {
				t.Errorf("%s: no HA id of its own", n)
			} else {
				ids[*id] = true
			}
			if s.Environment["REFGC_WEBHOOK_TOKEN"] == nil {
				t.Errorf("%s: no webhook token", n)
			}
		}
		a, _ := mountOf(svc("refgc-a"), "/var/lib/refgc")
		b, _ := mountOf(svc("refgc-b"), "/var/lib/refgc")
		if a.Source == "" || a.Source == b.Source {
			t.Errorf("the instances must keep their projections apart: %q, %q", a.Source, b.Source)
		}
	})
	t.Run("the registry notifies every instance", func(t *testing.T) {
		cfg := registryConfig(t, "registry-cluster.yml")
		var urls []string
		for _, ep := range cfg.Notifications.Endpoints {
			urls = append(urls, ep.URL)
			token := *svc("refgc-a").Environment["REFGC_WEBHOOK_TOKEN"]
			if ep.Headers.Get("Authorization") != "Bearer "+token {
				t.Errorf("endpoint %s: token %v", ep.URL, ep.Headers)
			}
		}
		want := []string{"http://refgc-a:8080" + daemon.WebhookPath, "http://refgc-b:8080" + daemon.WebhookPath}
		if !cfg.Notifications.EventConfig.IncludeReferences || !slices.Equal(urls, want) {
			t.Errorf("notifications %v, want %v with references", urls, want)
		}
		if _, ok := cfg.Storage["cache"]; ok {
			t.Error("the registry must run without a blob descriptor cache")
		}
		if m, ok := mountOf(svc("registry"), "/etc/distribution/config.yml"); !ok || filepath.Base(m.Source) != "registry-cluster.yml" {
			t.Error("registry not configured by registry-cluster.yml")
		}
	})
}
