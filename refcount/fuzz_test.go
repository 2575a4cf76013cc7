package refcount

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

func TestNodeKeysRoundTrip(t *testing.T) {
	d256 := digest.FromString("x")
	d512 := digest.SHA512.FromString("x")
	refs := []events.NodeRef{
		{Kind: events.NodeTag, Repo: "a/b", Name: "v1.0_rc-1"},
		{Kind: events.NodeManifest, Repo: "a", Digest: d256},
		{Kind: events.NodeLayer, Repo: "a.b/c", Digest: d512},
		{Kind: events.NodeBlob, Digest: d256},
		{Kind: events.NodeBlob, Digest: digest.SHA384.FromString("y")},
		{Kind: events.NodeLabel, Repo: "a", Name: "k=v"},
		{Kind: events.NodeLegacy, Repo: "a", Name: "img1"},
	}
	for _, r := range refs {
		t.Run(r.String(), func(t *testing.T) {
			k := nodeKey(r)
			got, err := parseNodeKey(k)
			if err != nil || got != r {
				t.Fatalf("round trip: %+v, %v", got, err)
			}
			if isSub(k) {
				t.Fatal("a node key taken for a sub-key")
			}
			sk := subKey(k, subIn, nodeKey(refs[0]))
			node, typ, rest, err := splitSub(sk)
			if err != nil || string(node) != string(k) || typ != subIn || string(rest) != string(nodeKey(refs[0])) {
				t.Fatalf("sub-key split: %q %q %q %v", node, typ, rest, err)
			}
		})
	}
	for _, junk := range [][]byte{nil, {}, {'b'}, {'b', 1, 2}, {'m', 'a'}, {'m', 'a', 0}, {'z', 'a', 0, 'x'}, {'b', 0xFE, 200, 'x'}} {
		if _, err := parseNodeKey(junk); err == nil {
			t.Errorf("parseNodeKey(%q) accepted", junk)
		}
		_ = isSub(junk)
		_, _, _, _ = splitSub(junk)
	}
}

// FuzzApply feeds arbitrary bytes as encoded events into a projection:
// nothing may panic, and whatever is applied leaves Check clean.
func FuzzApply(f *testing.F) {
	seed := []events.Event{
		pushM("app", "m", "v1", []string{"l"}, []string{"c"}, "s"),
		pushB("app", "l"), mountB("b", "l", "app"), setT("app", "v2", "m"), delT("app", "v1"),
		delD("app", "m"), touch("app", "l"), delRepo("app"),
		{Kind: events.ObservedAbsent, Absent: &events.Observation{Node: layN("app", "l"), AsOf: 1}},
		{Kind: events.Collected, Collected: &events.CollectedRef{Node: blobN("l")}},
	}
	for i, e := range seed {
		e.ID, e.Time, e.V = "seed", t0, events.Version
		b, _ := json.Marshal(e)
		f.Add(b, uint8(i))
	}
	f.Add([]byte(`{"v":1,"id":"x","time":"2026-01-01T00:00:00Z","kind":"tag.set","tag":{"repo":"../x","name":"v","digest":"sha256:zz"}}`), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		p, err := Open(filepath.Join(t.TempDir(), "refs.db"), Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var recs []events.Record
		for i := range int(n%4) + 1 {
			ev, err := events.Decode(data)
			recs = append(recs, events.Record{Seq: uint64(i + 1), Event: ev, Err: err})
			if i == 0 {
				// A second statement of a known event, to mix with the fuzzed one.
				s := seed[int(n)%len(seed)]
				s.ID, s.Time = "mix", t0
				recs = append(recs, events.Record{Seq: uint64(i + 100), Event: s})
			}
		}
		if _, err := p.Apply(recs); err != nil {
			t.Fatalf("apply: %v", err)
		}
		ms, err := p.Check()
		if err != nil || len(ms) > 0 {
			t.Fatalf("check after fuzzed events: %v %v", ms, err)
		}
	})
}
