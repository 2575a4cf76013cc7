package refcount

import (
	"slices"
	"testing"

	"github.com/refgc/refgc/events"
)

func TestWhy(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""), pushM("app", "idx", "v1", nil, []string{"m"}, ""), pushB("app", "loose"))
	w, err := f.p.Why(blobN("l"))
	if err != nil {
		t.Fatal(err)
	}
	var chain []string
	for _, h := range w.Chain {
		chain = append(chain, h.Node.String())
	}
	want := []string{tagN("app", "v1").String(), manN("app", "idx").String(), manN("app", "m").String(), layN("app", "l").String(), blobN("l").String()}
	if w.Root != "tag" || !slices.Equal(chain, want) {
		t.Fatalf("why: root %q chain %v", w.Root, chain)
	}
	w, err = f.p.Why(layN("app", "loose"))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Chain) != 0 || w.Lease == nil || w.Eligible == nil {
		t.Fatalf("why of a leased, unheld layer: %+v", w)
	}
	if _, err := f.p.Why(blobN("nope")); err == nil {
		t.Fatal("why of an unknown node succeeded")
	}
}

func TestImpact(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushM("app", "m1", "v1", []string{"shared", "own1"}, nil, ""),
		pushM("app", "m2", "v2", []string{"shared", "own2"}, nil, ""),
		pushM("app", "sig", "", []string{"sigl"}, nil, "m1"))
	im, err := f.p.Impact(tagN("app", "v1"), f.now)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range im.Deleted {
		got = append(got, n.String())
	}
	slices.Sort(got)
	want := []events.NodeRef{tagN("app", "v1"), manN("app", "m1"), blobN("m1"), layN("app", "own1"), blobN("own1"),
		manN("app", "sig"), blobN("sig"), layN("app", "sigl"), blobN("sigl")}
	var ws []string
	for _, w := range want {
		ws = append(ws, w.String())
	}
	slices.Sort(ws)
	if !slices.Equal(got, ws) {
		t.Fatalf("impact:\n got %v\nwant %v", got, ws)
	}
	if im.Bytes != int64(len("m1")+len("own1")+len("sig")+len("sigl")) {
		t.Fatalf("bytes %d", im.Bytes)
	}
	// Nothing changed.
	f.expect(manN("app", "m1"), 1, true)
	f.expect(tagN("app", "v1"), 0, true)
	f.check()

	im, err = f.p.Impact(manN("app", "m2"), f.now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(im.Deleted, tagN("app", "v2")) || slices.Contains(im.Deleted, blobN("shared")) {
		t.Fatalf("impact of a manifest delete: %v", im.Deleted)
	}
}

func TestUsage(t *testing.T) {
	f := newFixture(t, Options{})
	// "shared" is linked by both repositories; each has its own layer too.
	f.apply(pushM("a", "ma", "v1", []string{"shared", "only-a"}, nil, ""),
		pushM("b", "mb", "v1", []string{"shared", "only-b-longer"}, nil, ""),
		pushB("b", "loose"))
	us, err := f.p.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if len(us) != 2 {
		t.Fatalf("usage: %+v", us)
	}
	size := func(ss ...string) (n int64) {
		for _, s := range ss {
			n += int64(len(s))
		}
		return n
	}
	want := map[string]RepoUsage{
		"a": {Repo: "a", Tags: 1, Manifests: 1, Layers: 2, Bytes: size("shared", "only-a", "ma"), UniqueBytes: size("only-a", "ma")},
		"b": {Repo: "b", Tags: 1, Manifests: 1, Layers: 3, Bytes: size("shared", "only-b-longer", "mb", "loose"),
			UniqueBytes: size("only-b-longer", "mb", "loose"), Reclaimable: size("loose")},
	}
	for _, u := range us {
		if u != want[u.Repo] {
			t.Errorf("usage of %s: %+v, want %+v", u.Repo, u, want[u.Repo])
		}
	}
	if us[0].Repo != "b" {
		t.Errorf("not largest first: %+v", us)
	}
}
