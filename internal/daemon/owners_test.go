package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
)

func TestOwnersConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		ok   bool
	}{
		{"an owner of every kind", "owners:\n  - source: quay\n", true},
		{"some kinds, a subject and a timeout", "owners:\n  - source: quay\n    kinds: [label, legacy]\n    subject: gc.quay\n    timeout: 3s\n", true},
		{"no source", "owners:\n  - kinds: [label]\n", false},
		{"an unknown kind", "owners:\n  - source: quay\n    kinds: [image]\n", false},
		{"two owners of a source", "owners:\n  - source: quay\n  - source: quay\n", false},
		// Without storage: every kind of every source must be owned.
		{"owners only, every kind owned", "collector: {ownersOnly: true}\nowners:\n  - source: quay\nnative:\n  sources: [{name: quay, tokens: [t]}]\n", true},
		{"owners only, every kind listed", "collector: {ownersOnly: true}\nowners:\n  - source: quay\n    kinds: [tag, manifest, layer, blob, label, legacy]\n", true},
		{"owners only without owners", "collector: {ownersOnly: true}\n", false},
		{"owners only, an owner of some kinds", "collector: {ownersOnly: true}\nowners:\n  - source: quay\n    kinds: [label, legacy]\n", false},
		{"owners only, a native source without an owner", "collector: {ownersOnly: true}\nowners:\n  - source: quay\nnative:\n  sources: [{name: harbor, tokens: [t]}]\n", false},
		{"owners only, storage too", "collector: {ownersOnly: true}\nowners:\n  - source: quay\nstorage: {filesystem: {rootdirectory: /x}}\n", false},
		{"owners only, a Distribution webhook", "collector: {ownersOnly: true}\nowners:\n  - source: quay\nwebhook: {token: t}\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.DataDir, cfg.Addr = t.TempDir(), "127.0.0.1:0"
			if err := cfg.DecodeYAML(strings.NewReader(tc.yaml)); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate: %v", err)
			}
			if tc.ok && strings.Contains(tc.yaml, "subject") {
				o := cfg.Owners[0]
				if len(o.Kinds) != 2 || o.Kinds[0] != events.NodeLabel || o.Timeout != 3*time.Second || o.Subject != "gc.quay" {
					t.Fatalf("decoded %+v", o)
				}
			}
		})
	}
}
