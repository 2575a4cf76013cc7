package daemon

import (
	"errors"
	"math"
	"testing"
	"time"
)

// A daemon reachable from other machines needs both tokens, or an
// explicit Insecure.
func TestValidateSecureDefaults(t *testing.T) {
	tests := []struct {
		name     string
		addr     string
		webhook  string
		admin    string
		insecure bool
		ok       bool
	}{
		{"loopback without tokens", "127.0.0.1:8080", "", "", false, true},
		{"localhost without tokens", "localhost:8080", "", "", false, true},
		{"ipv6 loopback", "[::1]:8080", "", "", false, true},
		{"all interfaces without tokens", ":8080", "", "", false, false},
		{"all interfaces, webhook token only", "0.0.0.0:8080", "w", "", false, false},
		{"all interfaces, admin token only", ":8080", "", "a", false, false},
		{"all interfaces with both tokens", ":8080", "w", "a", false, true},
		{"a host name without tokens", "refgc.internal:8080", "", "", false, false},
		{"all interfaces, insecure", ":8080", "", "", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			c.Addr, c.Webhook.Token, c.AdminToken, c.Insecure = tt.addr, tt.webhook, tt.admin, tt.insecure
			err := c.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate: %v, want ok=%v", err, tt.ok)
			}
		})
	}
	c := Defaults()
	c.Addr, c.Webhook.Tokens, c.AdminToken = ":8080", []string{"", "rotated"}, "a"
	if err := c.Validate(); err != nil {
		t.Errorf("a token in the rotation list: %v", err)
	}
}

// A partition must name a role and an index within its counts, and
// works with registry storage only.
func TestValidatePartition(t *testing.T) {
	for _, tt := range []struct {
		name   string
		part   PartitionConfig
		owners bool
		ok     bool
	}{
		{"none", PartitionConfig{}, false, true},
		{"repository partition", PartitionConfig{Name: "r1", Repos: 2, Digests: 4}, false, true},
		{"digest partition", PartitionConfig{Name: "d3", Repos: 2, Digests: 4}, false, true},
		{"index out of range", PartitionConfig{Name: "d4", Repos: 2, Digests: 4}, false, false},
		{"no counts", PartitionConfig{Name: "r0"}, false, false},
		{"unknown role", PartitionConfig{Name: "x0", Repos: 1, Digests: 1}, false, false},
		{"with owners", PartitionConfig{Name: "r0", Repos: 1, Digests: 1}, true, false},
		{"counts without a partition", PartitionConfig{Repos: 2, Digests: 2}, false, false},
		{"another spelling", PartitionConfig{Name: "r01", Repos: 2, Digests: 2}, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			c.Addr, c.Partition, c.Collector.OwnersOnly = "127.0.0.1:0", tt.part, tt.owners
			err := c.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// The collector's numbers: none negative, the rate limit a number.
func TestValidateCollectorNumbers(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*CollectorConfig)
		ok   bool
	}{
		{"defaults", func(*CollectorConfig) {}, true},
		{"zero round time: the default", func(c *CollectorConfig) { c.RoundTime = 0 }, true},
		{"negative round time", func(c *CollectorConfig) { c.RoundTime = -time.Second }, false},
		{"negative batch", func(c *CollectorConfig) { c.BatchSize = -1 }, false},
		{"rate limit", func(c *CollectorConfig) { c.RateLimit = 50 }, true},
		{"infinite rate limit", func(c *CollectorConfig) { c.RateLimit = math.Inf(1) }, false},
		{"rate limit not a number", func(c *CollectorConfig) { c.RateLimit = math.NaN() }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			c.Addr = "127.0.0.1:8080"
			tt.set(&c.Collector)
			err := c.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
