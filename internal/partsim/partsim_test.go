package partsim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

func tiny(t *testing.T, objects int64, parts ...int) *Result {
	t.Helper()
	res, err := Run(Config{Objects: objects, Partitions: parts, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestInvariants checks a small registry under every scheme: every object
// is counted once, what partitions send and receive agree, and the
// registry is what its size asks for.
func TestInvariants(t *testing.T) {
	res := tiny(t, 30_000, 1, 4, 16)
	tot := res.Totals
	if got := float64(tot.Objects()); got < 30_000 || got > 40_000 {
		t.Errorf("registry of %v objects for a target of 30,000", got)
	}
	if tot.ChildEdges == 0 || tot.SubjectEdges == 0 || tot.Pushes == 0 {
		t.Fatalf("the registry has no indexes or referrers: %+v", tot)
	}
	// Every layer link and every revision holds exactly one blob: its one
	// cross-partition edge.
	if tot.EdgeWrites != tot.Links+tot.Manifests {
		t.Errorf("edge writes %d, want links + manifests = %d", tot.EdgeWrites, tot.Links+tot.Manifests)
	}
	repoNodes := tot.Tags + tot.Manifests + tot.Links
	for _, s := range res.Schemes {
		t.Run(fmt.Sprintf("%s/%d", s.Scheme, s.N), func(t *testing.T) {
			switch s.Scheme {
			case SchemeRepo:
				copies := int64(math.Round(s.BlobCopies * float64(tot.Blobs)))
				if s.RepoObjects.Total != repoNodes+copies {
					t.Errorf("objects %d, want repository nodes %d + blob copies %d", s.RepoObjects.Total, repoNodes, copies)
				}
				if copies < tot.Blobs || (s.N == 1 && copies != tot.Blobs) {
					t.Errorf("%d blob copies of %d blobs on %d partitions", copies, tot.Blobs, s.N)
				}
				if s.PurgeAsks != s.N-1 || s.StatementsPerPush != 0 {
					t.Errorf("purge asks %d, statements per push %v", s.PurgeAsks, s.StatementsPerPush)
				}
			default:
				if s.RepoObjects.Total != repoNodes || s.DigestObjects.Total != tot.Blobs {
					t.Errorf("repository partitions hold %d (want %d), digest partitions %d (want %d)",
						s.RepoObjects.Total, repoNodes, s.DigestObjects.Total, tot.Blobs)
				}
				if s.MachineObjects.Total != tot.Objects() {
					t.Errorf("machines hold %d objects, want %d", s.MachineObjects.Total, tot.Objects())
				}
				if s.DigestStatements.Total != tot.Statements {
					t.Errorf("digest partitions received %d statements, %d were sent", s.DigestStatements.Total, tot.Statements)
				}
				if want := float64(tot.Statements) / float64(tot.Pushes); s.StatementsPerPush != want {
					t.Errorf("statements per push %v, want %v", s.StatementsPerPush, want)
				}
				if s.DistinctPerPush > float64(s.N) || s.DistinctP99 > s.N || s.DistinctPerPush <= 0 {
					t.Errorf("%v distinct digest partitions per push (p99 %d) of %d", s.DistinctPerPush, s.DistinctP99, s.N)
				}
				if s.N == 1 && s.OffMachine != 0 {
					t.Errorf("one machine, yet %v of the statements leave it", s.OffMachine)
				}
				if s.Failures[1].Stalled != int64(s.DigestObjects.Max) {
					t.Errorf("a digest partition's failure stalls %d, it holds %v", s.Failures[1].Stalled, s.DigestObjects.Max)
				}
			}
			if s.N == 1 && s.Scheme != SchemePlaced && s.RepoEvents.Total != tot.RepoEvents {
				t.Errorf("events %d, want %d", s.RepoEvents.Total, tot.RepoEvents)
			}
			if s.RepoObjects.Max < s.RepoObjects.Mean || s.RepoObjects.Min > s.RepoObjects.Mean {
				t.Errorf("stats out of order: %+v", s.RepoObjects)
			}
		})
	}
	if again := tiny(t, 30_000, 1, 4, 16); !reflect.DeepEqual(res, again) {
		t.Error("two runs with one seed differ")
	}
}

// TestPartitionFunctions checks that the partition functions spread keys
// evenly and move few repositories when partitions are added.
func TestPartitionFunctions(t *testing.T) {
	const n, keys = 16, 64_000
	counts := make([]int, n)
	moved := 0
	for i := range keys {
		name := repoName(i)
		p := refcount.RepoPartition(name, n)
		counts[p]++
		if refcount.RepoPartition(name, n+1) != p {
			moved++
		}
		if q := DigestPartition(splitmix(uint64(i)), n); q < 0 || q >= n {
			t.Fatalf("digest partition %d of %d", q, n)
		}
	}
	for p, c := range counts {
		if math.Abs(float64(c)-keys/n)/(keys/n) > 0.1 {
			t.Errorf("partition %d holds %d of %d keys", p, c, keys)
		}
	}
	if want := keys / (n + 1); math.Abs(float64(moved-want))/float64(want) > 0.1 {
		t.Errorf("%d repositories moved from %d to %d partitions, want about %d", moved, n, n+1, want)
	}
}

// emitter turns the generated registry into refgc's events.
type emitter struct {
	evs []events.Event
	at  time.Time
}

func dg(b blob) digest.Digest {
	return digest.FromBytes(binary.BigEndian.AppendUint64(nil, uint64(b.ref)))
}

func mediaTypeName(n int) string {
	if n == len(mtIndex) {
		return mtIndex
	}
	return mtManifest
}

func (e *emitter) add(ev events.Event) {
	e.at = e.at.Add(time.Millisecond)
	ev.V, ev.ID, ev.Time, ev.Source = events.Version, fmt.Sprintf("ev-%d", len(e.evs)), e.at, "sim"
	e.evs = append(e.evs, ev)
}

func (e *emitter) startRepo(*repo) {}
func (e *emitter) link(r *repo, b blob, fresh, mounted bool) {
	body := &events.Blob{Repo: r.name, Digest: dg(b), Size: b.size}
	kind := events.BlobPushed
	if mounted {
		kind, body.From = events.BlobMounted, repoName(int(b.origin))
	}
	e.add(events.Event{Kind: kind, Blob: body})
}
func (e *emitter) manifest(r *repo, m *manifest, fresh bool) {
	body := &events.Manifest{Repo: r.name, Digest: dg(m.digest), MediaType: mediaTypeName(m.mediaType), Size: m.size}
	for i, b := range m.blobs {
		mt := mtLayer
		if blobMediaType(i) == len(mtConfig) {
			mt = mtConfig
		}
		body.Blobs = append(body.Blobs, events.Descriptor{MediaType: mt, Digest: dg(b), Size: b.size})
	}
	for _, c := range m.children {
		body.Children = append(body.Children, events.Descriptor{MediaType: mediaTypeName(c.mediaType), Digest: dg(c.digest), Size: c.size})
	}
	if s := m.subject; s != nil {
		body.Subject = &events.Descriptor{MediaType: mediaTypeName(s.mediaType), Digest: dg(s.digest), Size: s.size}
	}
	e.add(events.Event{Kind: events.ManifestPushed, Manifest: body})
}
func (e *emitter) tag(r *repo, name string, m *manifest, first bool) {
	e.add(events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: r.name, Name: name, Digest: dg(m.digest)}})
}
func (e *emitter) endPush(*repo) {}
func (e *emitter) endRepo(*repo) {}

// TestProjectionBytes applies a generated registry to a real projection
// and checks the byte model against the bbolt file: the same nodes, the
// same edges, and the same bytes of keys and values to within 1 %.
func TestProjectionBytes(t *testing.T) {
	em := &emitter{at: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	res, err := simulate(Config{Objects: 4_000, Partitions: []int{1}, Seed: 5, SeqLen: 2}, em)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := refcount.Open(path, refcount.Options{Untagged: refcount.PolicyKeep, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(em.evs); i += 500 {
		var batch []events.Record
		for j, ev := range em.evs[i:min(i+500, len(em.evs))] {
			batch = append(batch, events.Record{Seq: uint64(i + j + 1), Event: ev})
		}
		out, err := p.Apply(batch)
		if err != nil {
			t.Fatal(err)
		}
		for _, inv := range out.Invalid {
			t.Fatalf("event %s refused: %v", inv.ID, inv.Err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got := map[string]int64{}
	var gotBytes int64
	err = db.View(func(tx *bolt.Tx) error {
		for _, name := range []string{"nodes", "stamps", "queue"} {
			err := tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
				gotBytes += int64(len(k) + len(v) + leafOverhead)
				got[name+"/"+classify(k)]++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tot := res.Totals
	want := map[string]int64{
		"nodes/t": tot.Tags, "nodes/m": tot.Manifests, "nodes/l": tot.Links, "nodes/b": tot.Blobs,
		"nodes/i": tot.InSubKeys, "nodes/r": tot.SubjectEdges, "nodes/j": tot.Manifests, "nodes/h": historyEntries(em),
		"stamps/t": tot.Tags,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: the projection holds %d, the model %d", k, got[k], w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %d keys the model does not know", k, g)
		}
	}
	if d := math.Abs(float64(res.Bytes-gotBytes)) / float64(gotBytes); d > 0.01 {
		t.Errorf("the model says %d bytes, the projection holds %d (%.1f %% off)", res.Bytes, gotBytes, d*100)
	}
	t.Logf("%d events, %d objects: model %d bytes, projection %d", len(em.evs), tot.Objects(), res.Bytes, gotBytes)
}

// classify names a key of nodes/ by its node kind, or its sub-key type.
// Repository and tag names never hold 0x00 or 0x01; raw digests may.
func classify(k []byte) string {
	node := len(k)
	switch k[0] {
	case 'b':
		node = blobKeyLen
	case 'm', 'l':
		node = bytes.IndexByte(k, 0) + 1 + digestKeyLen
	case 't':
		if j := bytes.IndexByte(k, 1); j > 0 {
			node = j
		}
	}
	if len(k) > node+1 {
		return string(k[node+1])
	}
	return string(k[:1])
}

func historyEntries(em *emitter) int64 {
	seen := map[string]bool{}
	for _, ev := range em.evs {
		if tg := ev.Tag; tg != nil {
			seen[tg.Repo+"\x00"+tg.Name+"\x00"+string(tg.Digest)] = true
		}
	}
	return int64(len(seen))
}
