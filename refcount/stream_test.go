package refcount

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/refgc/refgc/events"
)

func TestBindStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := p.StreamID(); err != nil || id != "" {
		t.Fatalf("StreamID of a new file = %q, %v", id, err)
	}
	steps := []struct {
		name    string
		bind    string
		wantErr error // nil: accepted
		after   string
	}{
		{"first use records it", "REFGC_EVENTS@2026-01-01T00:00:00Z", nil, "REFGC_EVENTS@2026-01-01T00:00:00Z"},
		{"the same again", "REFGC_EVENTS@2026-01-01T00:00:00Z", nil, "REFGC_EVENTS@2026-01-01T00:00:00Z"},
		{"recreated stream", "REFGC_EVENTS@2026-02-01T00:00:00Z", ErrStreamChanged, "REFGC_EVENTS@2026-01-01T00:00:00Z"},
		{"another stream", "OTHER@2026-01-01T00:00:00Z", ErrStreamChanged, "REFGC_EVENTS@2026-01-01T00:00:00Z"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			err := p.BindStream(st.bind)
			if (st.wantErr == nil && err != nil) || (st.wantErr != nil && !errors.Is(err, st.wantErr)) {
				t.Fatalf("BindStream(%q) = %v, want %v", st.bind, err, st.wantErr)
			}
			if err != nil && !errors.Is(err, events.ErrStreamChanged) {
				t.Errorf("%v is not events.ErrStreamChanged", err)
			}
			if id, err := p.StreamID(); err != nil || id != st.after {
				t.Errorf("StreamID = %q, %v; want %q", id, err, st.after)
			}
		})
	}
	if err := p.BindStream(""); err == nil {
		t.Error("bound to an empty identity")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// The identity survives a reopen, read-only too.
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if id, err := ro.StreamID(); err != nil || id != steps[0].after {
		t.Errorf("StreamID after reopening = %q, %v", id, err)
	}
}
