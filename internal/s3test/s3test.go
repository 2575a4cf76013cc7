// Package s3test is test support: an S3-protocol server (gofakes3 over its
// in-memory backend) running in-process behind a handler that counts the
// requests it serves by verb and can answer 503 SlowDown on demand, as an
// overloaded S3 prefix does.
//
// Invariants:
//   - Every request the server receives is counted exactly once, under the
//     verb it is (list, head, get, put, delete), throttled or not; the
//     counts are what a bill from an object store would show.
//   - With Options.Mirror set, every object the bucket holds is also a file
//     under that directory, at its key, written before the request that
//     stored it is answered and removed (with the directories it leaves
//     empty) before the request that deleted it is answered; tests and
//     oracles that read a filesystem layout read the bucket there. The
//     mirror is read-only for tests: writing it changes nothing in S3.
//   - Everything is torn down by t.Cleanup.
package s3test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Bucket is the bucket every server holds.
const Bucket = "registry"

// Verb is the kind of an S3 request, as object stores bill them.
type Verb int

// The verbs counted.
const (
	List   Verb = iota // ListObjects(V2), ListMultipartUploads, ListParts
	Head               // HeadObject, HeadBucket
	Get                // GetObject
	Put                // PutObject, CopyObject, multipart create/upload/complete
	Delete             // DeleteObject, DeleteObjects (one request, any number of keys), multipart abort
	nVerbs
)

var verbNames = [nVerbs]string{"list", "head", "get", "put", "delete"}

func (v Verb) String() string { return verbNames[v] }

// Counts holds requests by verb.
type Counts [nVerbs]int64

// Total is the sum over all verbs.
func (c Counts) Total() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

// Sub returns c - o, verb by verb.
func (c Counts) Sub(o Counts) Counts {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

// String formats the counts as "list=… head=… get=… put=… delete=… total=…".
func (c Counts) String() string {
	var b strings.Builder
	for v := range nVerbs {
		fmt.Fprintf(&b, "%s=%d ", v, c[v])
	}
	fmt.Fprintf(&b, "total=%d", c.Total())
	return b.String()
}

// Options configures Start.
type Options struct {
	// Mirror, if set, is a directory that mirrors the bucket's objects as
	// files (see the package invariants).
	Mirror string
}

// Server is a running S3-protocol server with one bucket.
type Server struct {
	// URL is the endpoint, "http://127.0.0.1:<port>".
	URL string
	// Mirror is Options.Mirror.
	Mirror string

	backend  gofakes3.Backend
	counts   [nVerbs]atomic.Int64
	throttle atomic.Int64 // requests still to answer 503 SlowDown
	slowed   atomic.Int64 // requests answered 503 SlowDown
	mu       sync.Mutex
	pinned   string // with ThrottleRequest: the request refused, "" until one arrives
	pinLeft  int    // its refusals still to come
	pinning  bool
	srv      *httptest.Server
}

// Start runs a server for the duration of the test. Its bucket lists by
// seeking in an index of its keys (see indexed).
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	mem := s3mem.New()
	if err := mem.CreateBucket(Bucket); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	var backend gofakes3.Backend = newIndexed(mem, Bucket)
	if opts.Mirror != "" {
		backend = &mirror{Backend: backend, dir: opts.Mirror}
	}
	s := &Server{Mirror: opts.Mirror, backend: backend}
	faker := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	s.srv = httptest.NewServer(s.handler(faker.Server()))
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL
	return s
}

// Params returns the parameters of Distribution's s3 storage driver (the
// registry's `storage: s3:` section) for this server, with rootdirectory
// set to root when root is not empty.
func (s *Server) Params(root string) map[string]any {
	p := map[string]any{
		"accesskey":      "refgc-test",
		"secretkey":      "refgc-test-secret",
		"region":         "us-east-1",
		"regionendpoint": s.URL,
		"bucket":         Bucket,
		"forcepathstyle": true,
		"secure":         false,
		"v4auth":         true,
		// The server speaks plain HTTP, so this verifies nothing; it gives
		// each driver an http.Client of its own. Without it every driver
		// shares http.DefaultClient, and the AWS SDK rewrites its Transport
		// at each new session when AWS_CA_BUNDLE is set: a data race
		// between the registry's driver and refgc's in one process.
		"skipverify": true,
	}
	if root != "" {
		p["rootdirectory"] = root
	}
	return p
}

// Counts returns the requests served so far, by verb.
func (s *Server) Counts() Counts {
	var c Counts
	for v := range nVerbs {
		c[v] = s.counts[v].Load()
	}
	return c
}

// Throttle makes the next n requests answer 503 SlowDown, as S3 does when a
// prefix receives more requests than it can take.
func (s *Server) Throttle(n int) { s.throttle.Store(int64(n)) }

// ThrottleRequest answers 503 SlowDown to the next request and to its
// retries (the same method and URL), n times in all, while every other
// request is served: a hot prefix, and the way to make an SDK that retries
// a throttled request 3 times give up on exactly one request (n = 4).
func (s *Server) ThrottleRequest(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pinned, s.pinLeft, s.pinning = "", n, n > 0
}

// refusePinned reports whether r is the pinned request with refusals left.
func (s *Server) refusePinned(r *http.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pinning {
		return false
	}
	key := r.Method + " " + r.URL.String()
	if s.pinned == "" {
		s.pinned = key
	}
	if key != s.pinned {
		return false
	}
	s.pinLeft--
	s.pinning = s.pinLeft > 0
	return true
}

// SlowedDown returns how many requests were answered 503 SlowDown.
func (s *Server) SlowedDown() int64 { return s.slowed.Load() }

// Put stores an object directly in the backend, without a request (and
// without counting one): for setting up large buckets quickly.
func (s *Server) Put(key string, content []byte) error {
	// The metadata a PUT through the API records.
	meta := map[string]string{"Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	_, err := s.backend.PutObject(Bucket, strings.TrimPrefix(key, "/"), meta, bytes.NewReader(content), int64(len(content)), nil)
	return err
}

func (s *Server) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.counts[classify(r)].Add(1)
		refuse := s.refusePinned(r)
		for !refuse {
			n := s.throttle.Load()
			if n <= 0 {
				break
			}
			refuse = s.throttle.CompareAndSwap(n, n-1)
		}
		if refuse {
			s.slowed.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+
				`<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// classify names the verb of a path-style S3 request.
func classify(r *http.Request) Verb {
	q := r.URL.Query()
	key := ""
	if parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2); len(parts) == 2 {
		key = parts[1]
	}
	switch r.Method {
	case http.MethodHead:
		return Head
	case http.MethodGet:
		if key == "" || q.Has("uploadId") || q.Has("uploads") {
			return List
		}
		return Get
	case http.MethodDelete:
		return Delete
	case http.MethodPost:
		if q.Has("delete") {
			return Delete
		}
		return Put
	default:
		return Put
	}
}

// mirror writes every object through to files under dir.
type mirror struct {
	gofakes3.Backend
	mu  sync.Mutex
	dir string
}

func (m *mirror) file(key string) (string, error) {
	p := filepath.Join(m.dir, filepath.FromSlash(key))
	if !strings.HasPrefix(p, filepath.Clean(m.dir)+string(filepath.Separator)) {
		return "", fmt.Errorf("s3test: key %q outside the mirror", key)
	}
	return p, nil
}

func (m *mirror) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, cond *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	b, err := io.ReadAll(input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	res, err := m.Backend.PutObject(bucket, key, meta, bytes.NewReader(b), int64(len(b)), cond)
	if err != nil {
		return res, err
	}
	p, err := m.file(key)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return res, err
	}
	return res, os.WriteFile(p, b, 0o644)
}

func (m *mirror) remove(key string) error {
	p, err := m.file(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// S3 has no directories: remove those the object leaves empty.
	for dir := filepath.Dir(p); dir != filepath.Clean(m.dir); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

func (m *mirror) DeleteObject(bucket, key string) (gofakes3.ObjectDeleteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	res, err := m.Backend.DeleteObject(bucket, key)
	if err != nil {
		return res, err
	}
	return res, m.remove(key)
}

func (m *mirror) DeleteMulti(bucket string, keys ...string) (gofakes3.MultiDeleteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	res, err := m.Backend.DeleteMulti(bucket, keys...)
	if err != nil {
		return res, err
	}
	for _, d := range res.Deleted {
		if err := m.remove(d.Key); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (m *mirror) CopyObject(srcBucket, srcKey, dstBucket, dstKey string, meta map[string]string) (gofakes3.CopyObjectResult, error) {
	return gofakes3.CopyObject(m, srcBucket, srcKey, dstBucket, dstKey, meta)
}
