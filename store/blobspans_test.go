package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// spans walks BlobSpans, checks its contract (each directory's spans
// consecutive from "" to "", each span's digests sorted, of the
// directory's prefix and within its bounds) and returns every digest,
// sorted, and the number of spans.
func spans(t *testing.T, s *Driver) ([]digest.Digest, int) {
	t.Helper()
	next := map[string]string{} // directory → where its next span starts; absent once its last span came
	done := map[string]bool{}
	var all []digest.Digest
	n := 0
	err := s.BlobSpans(context.Background(), func(alg digest.Algorithm, prefix, from, to string, ds []digest.Digest) error {
		dir := string(alg) + "/" + prefix
		if done[dir] {
			return fmt.Errorf("%s: span [%q, %q) after its last", dir, from, to)
		}
		if want := next[dir]; from != want {
			return fmt.Errorf("%s: span from %q, want %q", dir, from, want)
		}
		if to != "" && to <= from {
			return fmt.Errorf("%s: empty or reversed span [%q, %q)", dir, from, to)
		}
		if !slices.IsSorted(ds) {
			return fmt.Errorf("%s: span [%q, %q) not sorted: %v", dir, from, to, ds)
		}
		for _, d := range ds {
			e := d.Encoded()
			if d.Algorithm() != alg || !strings.HasPrefix(e, prefix) || e < from || (to != "" && e >= to) {
				return fmt.Errorf("%s listed in span [%q, %q) of %s", d, from, to, dir)
			}
		}
		all = append(all, ds...)
		n++
		if to == "" {
			done[dir] = true
		}
		next[dir] = to
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := range next {
		if !done[dir] {
			t.Fatalf("%s: no last span", dir)
		}
	}
	if !slices.IsSorted(all) {
		slices.Sort(all)
	}
	return all, n
}

// blobsWithPrefix puts n blobs whose encoded digest starts with prefix.
func blobsWithPrefix(t *testing.T, s *Driver, prefix string, n int) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for i := 0; len(ds) < n; i++ {
		c := fmt.Sprint("blob of ", prefix, " ", i)
		if strings.HasPrefix(digest.FromString(c).Encoded(), prefix) {
			ds = append(ds, putBlob(t, s, c))
		}
	}
	return ds
}

func TestBlobSpans(t *testing.T) { forEachBackend(t, testBlobSpans) }

func testBlobSpans(t *testing.T, s *Driver) {
	s.spanMax = 4
	if got, _ := spans(t, s); len(got) != 0 {
		t.Fatalf("empty storage: %v", got)
	}
	// One directory of many spans, one of exactly one span's worth, one of a
	// single blob.
	want := blobsWithPrefix(t, s, "ab", 50)
	want = append(want, blobsWithPrefix(t, s, "0f", 4)...)
	want = append(want, blobsWithPrefix(t, s, "f0", 1)...)
	slices.Sort(want)
	if s.dirs != nil {
		// Entries of a prefix directory that are not blob data: a
		// directory without its data file, a file, a name of another
		// prefix, a name that is no digest.
		dir := filepath.Join(s.dirs.root, "blobs", "sha256", "ab")
		for _, name := range []string{"ab" + strings.Repeat("0", 62), "ab" + strings.Repeat("1", 62) + "/data", "cd" + strings.Repeat("2", 62), "abc"} {
			if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "ab"+strings.Repeat("3", 62)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ max, minSpans int }{{1, 50}, {4, 14}, {16, 5}, {128, 3}} {
		t.Run(fmt.Sprint("span of ", tc.max), func(t *testing.T) {
			s.spanMax = tc.max
			got, n := spans(t, s)
			if !slices.Equal(got, want) {
				t.Fatalf("got %d blobs %v, want %d %v", len(got), got, len(want), want)
			}
			if n < tc.minSpans {
				t.Fatalf("%d spans, want at least %d", n, tc.minSpans)
			}
		})
	}
}
