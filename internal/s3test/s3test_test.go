package s3test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws" // the driver under test
)

func TestDriverCountsAndMirror(t *testing.T) {
	ctx := context.Background()
	mirror := t.TempDir()
	s := Start(t, Options{Mirror: mirror})
	d, err := factory.Create(ctx, "s3aws", s.Params(""))
	if err != nil {
		t.Fatal(err)
	}
	step := func(name string, want Counts, fn func() error) {
		t.Helper()
		before := s.Counts()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := s.Counts().Sub(before); got != want {
			t.Fatalf("%s: %v, want %v", name, got, want)
		}
	}
	step("put", Counts{Put: 1}, func() error { return d.PutContent(ctx, "/a/b/link", []byte("x")) })
	if b, err := os.ReadFile(filepath.Join(mirror, "a/b/link")); err != nil || string(b) != "x" {
		t.Fatalf("mirror: %q %v", b, err)
	}
	step("get", Counts{Get: 1}, func() error { _, err := d.GetContent(ctx, "/a/b/link"); return err })
	step("list", Counts{List: 1}, func() error {
		got, err := d.List(ctx, "/a")
		if err == nil && !slices.Equal(got, []string{"/a/b"}) {
			err = errors.New("listed " + got[0])
		}
		return err
	})
	step("stat", Counts{Head: 1}, func() error { _, err := d.Stat(ctx, "/a/b/link"); return err })
	step("delete", Counts{List: 1, Delete: 1}, func() error { return d.Delete(ctx, "/a") })
	if _, err := os.Stat(filepath.Join(mirror, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mirror keeps an empty directory: %v", err)
	}
	if _, err := d.GetContent(ctx, "/a/b/link"); !errors.As(err, new(storagedriver.PathNotFoundError)) {
		t.Fatalf("deleted object: %v", err)
	}

	// A throttled request is retried by the SDK: every attempt is counted.
	s.Throttle(1)
	before := s.Counts()
	if err := d.PutContent(ctx, "/c", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if got := s.Counts().Sub(before); got != (Counts{Put: 2}) || s.SlowedDown() != 1 {
		t.Fatalf("throttled put: %v, slowed %d", got, s.SlowedDown())
	}
}
