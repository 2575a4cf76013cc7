package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/store"
)

const repoRoot = "../.."

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	return loadComposeFile(t, "docker-compose.yml")
}

// mountOf returns the volume or bind mount of svc at target.
func mountOf(svc types.ServiceConfig, target string) (types.ServiceVolumeConfig, bool) {
	for _, v := range svc.Volumes {
		if v.Target == target {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

func TestComposeFile(t *testing.T) {
	p := loadCompose(t)
	want := []string{"grafana", "nats", "prometheus", "refgc", "registry", "volume-init"}
	if got := p.ServiceNames(); !slices.Equal(sortedCopy(got), want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	svc := func(name string) types.ServiceConfig {
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	t.Run("nats runs JetStream", func(t *testing.T) {
		n := svc("nats")
		if !strings.HasPrefix(n.Image, "nats:2") || !slices.Contains(n.Command, "-js") {
			t.Errorf("nats: image %q command %v", n.Image, n.Command)
		}
		conf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nats.conf"))
		if err != nil || !strings.Contains(string(conf), fmt.Sprintf("max_payload: %d", events.MaxEncodedSize+64<<10)) {
			t.Errorf("deploy/nats.conf must let the largest event through (%v)", err)
		}
	})
	t.Run("nats requires a token, which refgc sends", func(t *testing.T) {
		conf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nats.conf"))
		if err != nil || !strings.Contains(string(conf), "token: $NATS_TOKEN") {
			t.Fatalf("deploy/nats.conf: no token authorization (%v)", err)
		}
		n, r := svc("nats").Environment["NATS_TOKEN"], svc("refgc").Environment["REFGC_NATS_TOKEN"]
		if n == nil || r == nil || *n == "" || *n != *r {
			t.Errorf("NATS_TOKEN %v, REFGC_NATS_TOKEN %v: want the same token", n, r)
		}
	})
	t.Run("services run as the volumes' owner", func(t *testing.T) {
		// refgc deletes what the registry wrote: both run as uid 65532 (the
		// distroless nonroot user), and an init service gives the named
		// volumes to it before either starts.
		init := svc("volume-init")
		if init.User != "0:0" || !strings.Contains(strings.Join(init.Command, " "), "chown -R 65532:65532 /var/lib/registry /var/lib/refgc") {
			t.Errorf("volume-init: user %q command %v", init.User, init.Command)
		}
		for _, target := range []string{"/var/lib/registry", "/var/lib/refgc"} {
			m, ok := mountOf(init, target)
			if !ok || m.Type != types.VolumeTypeVolume {
				t.Errorf("volume-init does not mount %s", target)
			}
		}
		for _, name := range []string{"refgc", "registry"} {
			s := svc(name)
			if s.User != "65532:65532" {
				t.Errorf("%s runs as %q", name, s.User)
			}
			if dep, ok := s.DependsOn["volume-init"]; !ok || dep.Condition != types.ServiceConditionCompletedSuccessfully {
				t.Errorf("%s does not wait for volume-init: %+v", name, s.DependsOn)
			}
		}
		if init.Restart != "no" {
			t.Errorf("volume-init restart %q", init.Restart)
		}
	})
	t.Run("start order by health, restart policies", func(t *testing.T) {
		for _, c := range []struct{ svc, on, cond string }{
			{"refgc", "nats", types.ServiceConditionHealthy},
			{"registry", "refgc", types.ServiceConditionHealthy},
			{"grafana", "prometheus", types.ServiceConditionHealthy},
		} {
			if dep, ok := svc(c.svc).DependsOn[c.on]; !ok || dep.Condition != c.cond {
				t.Errorf("%s depends on %s: %+v, want %s", c.svc, c.on, dep, c.cond)
			}
		}
		for _, name := range []string{"nats", "refgc", "registry", "prometheus", "grafana"} {
			s := svc(name)
			if s.Restart != types.RestartPolicyUnlessStopped {
				t.Errorf("%s restart %q", name, s.Restart)
			}
			if s.HealthCheck == nil || len(s.HealthCheck.Test) < 2 || s.HealthCheck.Test[0] != "CMD" {
				t.Errorf("%s health check %+v", name, s.HealthCheck)
			}
		}
		// refgc's check is its own binary (the image has no shell), and the
		// command exists.
		test := svc("refgc").HealthCheck.Test
		if test[1] != "/usr/local/bin/refgc" || test[2] != "health" {
			t.Fatalf("refgc health check %v", test)
		}
		if c, _, err := newRoot().Find(test[2:]); err != nil || c.Name() != "health" {
			t.Errorf("refgc %v: %v", test[2:], err)
		}
	})
	t.Run("build context leaves state out", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for _, want := range []string{"data", ".git", "**/*.db"} {
			if !slices.Contains(lines, want) {
				t.Errorf(".dockerignore lacks %q", want)
			}
		}
	})
	t.Run("refgc is built here", func(t *testing.T) {
		r := svc("refgc")
		if r.Build == nil || filepath.Base(r.Build.Dockerfile) != "Dockerfile" {
			t.Fatalf("refgc build: %+v", r.Build)
		}
		if _, err := os.Stat(filepath.Join(repoRoot, "Dockerfile")); err != nil {
			t.Error(err)
		}
		if r.Environment["REFGC_WEBHOOK_TOKEN"] == nil {
			t.Error("refgc has no REFGC_WEBHOOK_TOKEN")
		}
	})
	t.Run("registry and refgc share the storage volume", func(t *testing.T) {
		reg, ok := mountOf(svc("registry"), "/var/lib/registry")
		if !ok || reg.Type != types.VolumeTypeVolume {
			t.Fatalf("registry storage mount: %+v", reg)
		}
		ref, ok := mountOf(svc("refgc"), "/var/lib/registry")
		if !ok || ref.Source != reg.Source {
			t.Fatalf("refgc storage mount %+v, registry's %+v", ref, reg)
		}
		if _, ok := p.Volumes[reg.Source]; !ok {
			t.Errorf("volume %q not declared", reg.Source)
		}
	})
	t.Run("mounted config files exist", func(t *testing.T) {
		for _, c := range []struct{ svc, target string }{
			{"registry", "/etc/distribution/config.yml"},
			{"refgc", "/etc/refgc/refgc.yml"},
			{"prometheus", "/etc/prometheus/prometheus.yml"},
			{"prometheus", "/etc/prometheus/alerts.yml"},
			{"grafana", "/etc/grafana/provisioning"},
			{"grafana", "/var/lib/grafana/dashboards"},
		} {
			m, ok := mountOf(svc(c.svc), c.target)
			if !ok || m.Type != types.VolumeTypeBind {
				t.Errorf("%s: no bind mount at %s", c.svc, c.target)
				continue
			}
			if _, err := os.Stat(m.Source); err != nil {
				t.Errorf("%s: %v", c.svc, err)
			}
		}
	})
	t.Run("registry config notifies refgc with the token", func(t *testing.T) {
		cfg := registryConfig(t, "registry.yml")
		if !cfg.Notifications.EventConfig.IncludeReferences || len(cfg.Notifications.Endpoints) != 1 {
			t.Fatalf("notifications: %+v", cfg.Notifications)
		}
		ep := cfg.Notifications.Endpoints[0]
		token := *svc("refgc").Environment["REFGC_WEBHOOK_TOKEN"]
		if ep.URL != "http://refgc:8080"+daemon.WebhookPath || ep.Headers.Get("Authorization") != "Bearer "+token {
			t.Errorf("endpoint %s %v, want the webhook with token %q", ep.URL, ep.Headers, token)
		}
		if _, ok := cfg.Storage["cache"]; ok {
			t.Error("the registry must run without a blob descriptor cache")
		}
		if del, _ := cfg.Storage["delete"]["enabled"].(bool); !del {
			t.Error("deletes are not enabled")
		}
	})
	t.Run("refgc config is valid and names the shared storage", func(t *testing.T) {
		cfg := refgcConfig(t, "refgc.yml")
		if _, err := store.FromConfig(context.Background(), cfg.Storage); err != nil {
			t.Errorf("storage section: %v", err)
		}
		fs, _ := cfg.Storage["filesystem"].(map[any]any)
		if fs["rootdirectory"] != "/var/lib/registry" || cfg.NATS.URL != "nats://nats:4222" {
			t.Errorf("refgc.yml: storage %v nats %q", cfg.Storage, cfg.NATS.URL)
		}
	})
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
