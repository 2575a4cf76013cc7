package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// benchObjects lays out n independent object sets directly on disk: in
// repository "bench", tag t<i> -> revision m<i> (with its history entry),
// layer link l<i>, and the data of blob l<i>.
func benchObjects(b *testing.B, root string, n int) (ms, ls []digest.Digest) {
	b.Helper()
	base := filepath.Join(root, "docker/registry/v2")
	repo := filepath.Join(base, "repositories/bench")
	write := func(p, content string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		m := digest.FromString(fmt.Sprint("manifest", i))
		l := digest.FromString(fmt.Sprint("layer", i))
		ms, ls = append(ms, m), append(ls, l)
		tag := filepath.Join(repo, "_manifests/tags", fmt.Sprint("t", i))
		write(filepath.Join(tag, "current/link"), m.String())
		write(filepath.Join(tag, "index/sha256", m.Encoded(), "link"), m.String())
		write(filepath.Join(repo, "_manifests/revisions/sha256", m.Encoded(), "link"), m.String())
		write(filepath.Join(repo, "_layers/sha256", l.Encoded(), "link"), l.String())
		write(filepath.Join(base, "blobs/sha256", l.Encoded()[:2], l.Encoded(), "data"), "layer")
	}
	return ms, ls
}

// BenchmarkUnlinkPurge measures one object set removed per iteration: a tag
// delete, a revision delete (with one history entry), a layer-link delete
// and a blob purge: four storage operations. Baselines in the same run:
// Distribution's own storage.Vacuum, and os.RemoveAll on the same paths.
func BenchmarkUnlinkPurge(b *testing.B) {
	ctx := context.Background()
	b.Run("store", func(b *testing.B) {
		root := b.TempDir()
		ms, ls := benchObjects(b, root, b.N)
		s := newFS(b, root)
		b.ResetTimer()
		for i := range b.N {
			tag := fmt.Sprint("t", i)
			if err := s.DeleteTag(ctx, "bench", tag); err != nil {
				b.Fatal(err)
			}
			if err := s.DeleteRevision(ctx, "bench", ms[i], []string{tag}); err != nil {
				b.Fatal(err)
			}
			if err := s.DeleteLayerLink(ctx, "bench", ls[i]); err != nil {
				b.Fatal(err)
			}
			if err := s.PurgeBlob(ctx, ls[i]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(4*b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("distribution-vacuum", func(b *testing.B) {
		root := b.TempDir()
		ms, ls := benchObjects(b, root, b.N)
		s := newFS(b, root)
		logrus.SetLevel(logrus.WarnLevel) // the vacuum logs every delete at info level
		v := storage.NewVacuum(ctx, s.StorageDriver())
		b.ResetTimer()
		for i := range b.N {
			tag := fmt.Sprint("t", i)
			// Vacuum has no tag delete: the registry's tag DELETE removes the directory.
			if err := s.StorageDriver().Delete(ctx, "/docker/registry/v2/repositories/bench/_manifests/tags/"+tag); err != nil {
				b.Fatal(err)
			}
			if err := v.RemoveManifest("bench", ms[i], []string{tag}); err != nil {
				b.Fatal(err)
			}
			if err := v.RemoveLayer("bench", ls[i]); err != nil {
				b.Fatal(err)
			}
			if err := v.RemoveBlob(ls[i].String()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(4*b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("os-removeall", func(b *testing.B) {
		root := b.TempDir()
		ms, ls := benchObjects(b, root, b.N)
		base := filepath.Join(root, "docker/registry/v2")
		repo := filepath.Join(base, "repositories/bench")
		b.ResetTimer()
		for i := range b.N {
			for _, p := range []string{
				filepath.Join(repo, "_manifests/tags", fmt.Sprint("t", i)),
				filepath.Join(repo, "_manifests/revisions/sha256", ms[i].Encoded()),
				filepath.Join(repo, "_layers/sha256", ls[i].Encoded()),
				filepath.Join(base, "blobs/sha256", ls[i].Encoded()[:2], ls[i].Encoded()),
			} {
				if err := os.RemoveAll(p); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(4*b.N)/b.Elapsed().Seconds(), "ops/s")
	})
}

// BenchmarkBlobsWalk measures a full Blobs walk over 4096 blobs, with one
// storage call in flight and with the default bound.
func BenchmarkBlobsWalk(b *testing.B) {
	ctx := context.Background()
	root := b.TempDir()
	benchObjects(b, root, 4096)
	for _, c := range []int{1, DefaultConcurrency} {
		b.Run(fmt.Sprint("concurrency=", c), func(b *testing.B) {
			s := newFS(b, root)
			s.concurrency = c
			b.ResetTimer()
			for range b.N {
				n := 0
				if err := s.Blobs(ctx, func(digest.Digest) error { n++; return nil }); err != nil {
					b.Fatal(err)
				}
				if n != 4096 {
					b.Fatalf("%d blobs", n)
				}
			}
		})
	}
}
