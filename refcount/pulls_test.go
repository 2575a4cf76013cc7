package refcount

import (
	"bytes"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
)

// TestFresh: Fresh says true exactly when applying the pull would write no
// node, and only when both a repository node and the blob exist.
func TestFresh(t *testing.T) {
	grace := DefaultGrace
	edge := grace / 8 // a push's lease has 7/8 of the grace to run until then
	touch := func(repo, d string) events.Event {
		return events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: repo, Digest: dg(d)}}
	}
	tests := []struct {
		name  string
		setup []events.Event
		repo  string
		d     string
		at    time.Duration
		want  bool
	}{
		{"layer link and blob just pushed", []events.Event{pushB("a", "l1")}, "a", "l1", 0, true},
		{"at the edge of the window", []events.Event{pushB("a", "l1")}, "a", "l1", edge, true},
		{"past the edge", []events.Event{pushB("a", "l1")}, "a", "l1", edge + time.Nanosecond, false},
		{"revision never pulled", []events.Event{pushM("a", "m1", "v1", nil, nil, "")}, "a", "m1", 0, false},
		{"revision pulled", []events.Event{pushM("a", "m1", "v1", nil, nil, ""), touch("a", "m1")}, "a", "m1", 0, true},
		{"the blob, from another repository", []events.Event{pushB("a", "l1")}, "b", "l1", 0, false},
		{"unknown digest", []events.Event{pushB("a", "l1")}, "a", "l2", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{Grace: grace})
			f.apply(tc.setup...)
			at := t0.Add(tc.at)
			got, err := f.p.Fresh(tc.repo, dg(tc.d), at)
			if err != nil || got != tc.want {
				t.Fatalf("Fresh = %v, %v; want %v", got, err, tc.want)
			}
			var before, after bytes.Buffer
			if err := f.p.Dump(&before); err != nil {
				t.Fatal(err)
			}
			f.now = at
			f.apply(touch(tc.repo, tc.d))
			if err := f.p.Dump(&after); err != nil {
				t.Fatal(err)
			}
			if got && !bytes.Equal(before.Bytes(), after.Bytes()) {
				t.Fatalf("a pull called fresh changed the projection:\n%s\n%s", before.String(), after.String())
			}
		})
	}
}
