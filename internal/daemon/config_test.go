package daemon

import (
	"errors"
	"testing"
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
