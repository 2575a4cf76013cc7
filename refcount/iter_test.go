package refcount

import (
	"cmp"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

func TestForEachIn(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushB("a", "c1"), pushB("a", "l1"), pushM("a", "m1", "v1", []string{"c1", "l1"}, nil, ""),
		pushB("a/b", "l2"), pushM("a/b", "m2", "v2", []string{"l2"}, nil, ""),
		pushB("ab", "l3"), pushM("ab", "m3", "v3", []string{"l3"}, nil, ""))
	list := func(it func(fn func(NodeInfo) error) error) []events.NodeRef {
		t.Helper()
		var out []events.NodeRef
		if err := it(func(ni NodeInfo) error { out = append(out, ni.Node); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	in := func(kind events.NodeKind, repo string) func(fn func(NodeInfo) error) error {
		return func(fn func(NodeInfo) error) error { return f.p.ForEachIn(kind, repo, fn) }
	}
	except := func(kind events.NodeKind, skipped string) func(fn func(NodeInfo) error) error {
		return func(fn func(NodeInfo) error) error {
			return f.p.ForEachExcept(kind, func(repo string) bool { return repo == skipped }, fn)
		}
	}
	for _, tc := range []struct {
		name string
		it   func(fn func(NodeInfo) error) error
		want []events.NodeRef
	}{
		{"tags of a", in(events.NodeTag, "a"), []events.NodeRef{tagN("a", "v1")}},
		{"tags of every repository", in(events.NodeTag, ""), []events.NodeRef{tagN("a", "v1"), tagN("a/b", "v2"), tagN("ab", "v3")}},
		{"manifests of a/b", in(events.NodeManifest, "a/b"), []events.NodeRef{manN("a/b", "m2")}},
		{"layers of a", in(events.NodeLayer, "a"), sorted(layN("a", "c1"), layN("a", "l1"))},
		{"layers of nobody", in(events.NodeLayer, "none"), nil},
		{"tags of every repository but a/b", except(events.NodeTag, "a/b"), []events.NodeRef{tagN("a", "v1"), tagN("ab", "v3")}},
		{"layers of every repository but a", except(events.NodeLayer, "a"), sorted(layN("a/b", "l2"), layN("ab", "l3"))},
		{"every blob", in(events.NodeBlob, "ignored"), sorted(blobN("c1"), blobN("l1"), blobN("m1"), blobN("l2"), blobN("m2"), blobN("l3"), blobN("m3"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := list(tc.it); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("blobs by prefix", func(t *testing.T) {
		all := list(in(events.NodeBlob, ""))
		var joined []events.NodeRef
		for i := range 256 {
			prefix := string("0123456789abcdef"[i>>4]) + string("0123456789abcdef"[i&15])
			got := list(func(fn func(NodeInfo) error) error { return f.p.ForEachBlobIn(digest.SHA256, prefix, fn) })
			for _, n := range got {
				if n.Digest.Encoded()[:2] != prefix {
					t.Fatalf("prefix %s gave %s", prefix, n)
				}
			}
			joined = append(joined, got...)
		}
		if !slices.Equal(joined, all) {
			t.Fatalf("prefixes gave %v, all blobs %v", joined, all)
		}
		if got := list(func(fn func(NodeInfo) error) error { return f.p.ForEachBlobIn(digest.SHA512, "00", fn) }); got != nil {
			t.Fatalf("sha512: %v", got)
		}
		if err := f.p.ForEachBlobIn(digest.SHA256, "zz", func(NodeInfo) error { return nil }); err == nil {
			t.Fatal("a prefix that is not hex was accepted")
		}
	})
	t.Run("blobs by span", func(t *testing.T) {
		span := func(prefix, from, to string) []events.NodeRef {
			return list(func(fn func(NodeInfo) error) error { return f.p.ForEachBlobSpan(digest.SHA256, prefix, from, to, fn) })
		}
		all := list(in(events.NodeBlob, ""))
		for _, n := range all {
			e := n.Digest.Encoded()
			prefix := e[:2]
			whole := span(prefix, "", "")
			// Split at the digest itself, and at short bounds around it.
			for _, bound := range []string{e, e[:4], e[:6], prefix} {
				before, after := span(prefix, "", bound), span(prefix, bound, "")
				if got := append(slices.Clone(before), after...); !slices.Equal(got, whole) {
					t.Fatalf("split of %s at %s: %v + %v, want %v", prefix, bound, before, after, whole)
				}
				for _, m := range before {
					if m.Digest.Encoded() >= bound {
						t.Fatalf("span before %s gave %s", bound, m)
					}
				}
			}
			if got := span(prefix, e, e); got != nil {
				t.Fatalf("empty span [%s, %s) gave %v", e, e, got)
			}
			if got := span("", e, e[:2]+"ffffffff"); len(got) == 0 || got[0] != n {
				t.Fatalf("span from %s gave %v", e, got)
			}
		}
		if err := f.p.ForEachBlobSpan(digest.SHA256, "ab", "a", "", func(NodeInfo) error { return nil }); err == nil {
			t.Fatal("an odd bound was accepted")
		}
	})
	if err := f.p.ForEachIn("nonsense", "a", func(NodeInfo) error { return nil }); err == nil {
		t.Fatal("an unknown kind was accepted")
	}
	if err := f.p.ForEachExcept(events.NodeBlob, func(string) bool { return false }, func(NodeInfo) error { return nil }); err == nil {
		t.Fatal("blobs by repository were accepted")
	}
}

// sorted orders node refs as the projection's keys do within one kind and
// repository (digest order).
func sorted(ns ...events.NodeRef) []events.NodeRef {
	slices.SortFunc(ns, func(a, b events.NodeRef) int {
		return cmp.Or(strings.Compare(a.Repo, b.Repo), strings.Compare(string(a.Digest), string(b.Digest)))
	})
	return ns
}
