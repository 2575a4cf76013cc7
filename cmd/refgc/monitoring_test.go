package main

import (
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// registeredMetrics is every metric name refgc exposes: those a running
// daemon gathers (with a histogram's series), and those declared in the
// sources that carry no sample until their first labelled observation.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	d := startDaemon(t)
	mfs, err := d.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	declared := regexp.MustCompile(`Name:\s*"(refgc_[a-z0-9_]+)"`)
	err = filepath.WalkDir(repoRoot, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		for _, m := range declared.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for n := range names {
		for _, s := range []string{"_bucket", "_count", "_sum"} {
			names[n+s] = true
		}
	}
	names["up"] = true // Prometheus's own
	return names
}

// metricsOf returns the metric names an expression selects.
func metricsOf(t *testing.T, p parser.Parser, expr string) []string {
	t.Helper()
	e, err := p.ParseExpr(expr)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs.Name)
		}
		return nil
	})
	return out
}

// The alert rules pass Prometheus's own validation (what `promtool check
// rules` runs), the dashboard's queries parse, and every metric either
// names is one refgc registers: a renamed metric breaks this test, not
// the pager at night.
func TestAlertRulesAndDashboard(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	known := registeredMetrics(t)
	check := func(where, expr string) {
		for _, m := range metricsOf(t, p, expr) {
			if !known[m] {
				t.Errorf("%s: metric %s is not one refgc registers", where, m)
			}
		}
	}

	groups, errs := rulefmt.ParseFile(filepath.Join(repoRoot, "deploy", "alerts.yml"), false, model.UTF8Validation, p,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if len(errs) > 0 {
		t.Fatalf("deploy/alerts.yml: %v", errs)
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("alert %s: needs a summary and a severity", r.Alert)
			}
			check("alert "+r.Alert, r.Expr)
		}
	}
	for _, want := range []string{"RefgcFollowerLag", "RefgcCollectionHalted", "RefgcDrift", "RefgcDeadLetters", "RefgcHeals"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}

	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana", "dashboards", "refgc.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: %v", err)
	}
	seen := map[string]bool{}
	for _, pn := range dash.Panels {
		for _, tg := range pn.Targets {
			check("panel "+pn.Title, tg.Expr)
			for _, m := range metricsOf(t, p, tg.Expr) {
				seen[m] = true
			}
		}
	}
	// What an operator looks at first.
	for _, want := range []string{"refgc_collector_reclaimed_bytes_total", "refgc_candidates", "refgc_candidates_bytes",
		"refgc_follower_lag_events", "refgc_collector_refused_total", "refgc_collector_heals_total", "refgc_reconcile_drift",
		"refgc_collector_pauses", "refgc_reconcile_progress_ratio"} {
		if !seen[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
	prom, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "prometheus.yml"))
	if err != nil || !strings.Contains(string(prom), "/etc/prometheus/alerts.yml") {
		t.Errorf("deploy/prometheus.yml does not load the alert rules (%v)", err)
	}
}
