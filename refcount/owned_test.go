package refcount

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

func TestOwnedModel(t *testing.T) {
	lbl := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "lbl1"}
	img := func(id string) events.NodeRef { return events.NodeRef{Kind: events.NodeLegacy, Repo: "app", Name: id} }
	attach := func(on bool) events.Event {
		k := events.LabelDetached
		if on {
			k = events.LabelAttached
		}
		return events.Event{Kind: k, Source: "quay", Label: &events.Label{Repo: "app", Digest: dg("m"), ID: "lbl1"}}
	}
	derived := func(id, d string) events.Event {
		return events.Event{Kind: events.LegacyDerived, Source: "quay",
			Legacy: &events.LegacyImage{Repo: "app", ID: id, Derived: []digest.Digest{dg(d)}}}
	}
	created := func(id, parent, storage string) events.Event {
		return events.Event{Kind: events.LegacyImageCreated, Source: "quay",
			Legacy: &events.LegacyImage{Repo: "app", ID: id, Parent: parent, Storage: dg(storage)}}
	}
	tests := []struct {
		name string
		run  func(f *fixture)
	}{
		{"nodes remember the source that stated them", func(f *fixture) {
			ev := pushM("app", "m", "v1", []string{"l"}, nil, "")
			ev.Source, ev.Manifest.Legacy = "quay", "img1"
			f.apply(ev, attach(true), created("img1", "", "st1"))
			for _, ref := range []events.NodeRef{manN("app", "m"), layN("app", "l"), blobN("l"), lbl, img("img1"), blobN("st1"),
				{Kind: events.NodeTag, Repo: "app", Name: "v1"}} {
				if ni, _ := f.info(ref); ni.Origin != "quay" {
					f.t.Fatalf("%s: origin %q, want quay", ref, ni.Origin)
				}
			}
			other := pushB("app", "l") // another source states the layer: it is that source's now
			other.Source = "registry-1"
			f.apply(other)
			if ni, _ := f.info(layN("app", "l")); ni.Origin != "registry-1" {
				f.t.Fatalf("layer origin %q", ni.Origin)
			}
			f.advance(48 * hour)
			ev2 := pushM("app", "m2", "", nil, nil, "")
			f.apply(ev2)
			cands, err := f.p.Candidates(f.now, 10)
			if err != nil {
				f.t.Fatal(err)
			}
			for _, c := range cands {
				if c.Node == lbl || c.Node == img("img1") {
					f.t.Fatalf("held node %s is a candidate", c.Node)
				}
			}
		}},
		{"label changes are ordered by event time", func(f *fixture) {
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
			f.apply(attach(true))
			f.expect(lbl, 1, true)
			f.advance(hour)
			f.apply(attach(false))
			f.expect(lbl, 0, true)
			late := attach(true)
			late.Time = t0.Add(hour / 2) // an attach from before the detach, delivered late
			f.apply(late)
			f.expect(lbl, 0, true)
			f.advance(hour)
			f.apply(attach(true))
			f.expect(lbl, 1, true)
		}},
		{"an attach that arrives after its detach still states the label", func(f *fixture) {
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
			f.advance(hour)
			f.apply(attach(false))
			f.expect(lbl, -1, false)
			late := attach(true)
			late.Time = t0.Add(hour / 2)
			f.apply(late)
			f.expect(lbl, 0, true) // unheld, so it is collected in time
		}},
		{"derived storage lives with its image, in any order", func(f *fixture) {
			f.apply(derived("img2", "der")) // before the image's own statement
			f.expect(img("img2"), 0, true)
			f.expect(blobN("der"), 1, true)
			f.apply(created("img1", "", "st1"), created("img2", "img1", "st2"))
			f.expect(blobN("der"), 1, true)
			f.expect(blobN("st2"), 1, true)
			f.expect(img("img1"), 1, true)
			f.apply(derived("img2", "der2"))
			f.expect(blobN("der2"), 1, true)
			f.apply(created("img2", "img1", "st2")) // stated again: the derived storage stays
			f.expect(blobN("der"), 1, true)
			f.expect(blobN("der2"), 1, true)
			f.advance(2 * hour)
			f.apply(events.Event{Kind: events.Collected, Collected: &events.CollectedRef{Node: img("img2"), AsOf: f.seq}})
			f.expect(blobN("der"), 0, true)
			f.expect(blobN("der2"), 0, true)
			f.expect(blobN("st2"), 0, true)
			f.expect(img("img1"), 0, true) // the parent is the next link
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			tc.run(f)
			f.check()
		})
	}
}
