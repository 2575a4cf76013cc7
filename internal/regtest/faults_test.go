package regtest

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/refgc/refgc/events/distribution"
)

// hook is a test endpoint that records, in order, the events it accepts.
type hook struct {
	URL string

	mu  sync.Mutex
	evs []distribution.DistributionEvent
	raw []json.RawMessage
}

func newHook(t *testing.T) *hook {
	t.Helper()
	h := &hook{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var env distribution.DistributionEnvelope
		if err := json.NewDecoder(req.Body).Decode(&env); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		evs := make([]distribution.DistributionEvent, len(env.Events))
		for i, raw := range env.Events {
			if err := json.Unmarshal(raw, &evs[i]); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.evs = append(h.evs, evs...)
		h.raw = append(h.raw, env.Events...)
	}))
	t.Cleanup(srv.Close)
	h.URL = srv.URL
	return h
}

// events returns the events received so far and their raw bytes.
func (h *hook) events() ([]distribution.DistributionEvent, []json.RawMessage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.evs), slices.Clone(h.raw)
}

// keys returns the key (see key) of every event received so far, in order.
func (h *hook) keys() []string {
	evs, _ := h.events()
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = key(e)
	}
	return out
}

// ids returns the id of every event received so far, in order.
func (h *hook) ids() []string {
	evs, _ := h.events()
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func (h *hook) index(k string) int { return slices.Index(h.keys(), k) }

func (h *hook) count(k string) int {
	n := 0
	for _, g := range h.keys() {
		if g == k {
			n++
		}
	}
	return n
}

// await waits until the event with key k has arrived.
func (h *hook) await(t *testing.T, k string) {
	t.Helper()
	WaitFor(t, k, func() bool { return h.index(k) >= 0 })
}

// key names an event by action, repository, kind of target and digest.
func key(e distribution.DistributionEvent) string {
	kind := "blob"
	if strings.Contains(e.Target.URL, "/manifests/") {
		kind = "manifest"
	}
	return e.Action + " " + e.Target.Repository + " " + kind + " " + e.Target.Digest.String()
}

// pushed is what the push of one image to a repository notifies.
type pushed struct {
	blobs    []string
	manifest string
}

func (p pushed) all() []string { return append(slices.Clone(p.blobs), p.manifest) }

func push(t *testing.T, r *Registry, repoTag string) pushed {
	t.Helper()
	repo, _, _ := strings.Cut(repoTag, ":")
	img := r.PushRandom(t, repoTag, 1)
	return keysOf(t, repo, img)
}

func keysOf(t *testing.T, repo string, img v1.Image) pushed {
	t.Helper()
	var p pushed
	for _, d := range BlobDigests(t, img) {
		p.blobs = append(p.blobs, "push "+repo+" blob "+d.String())
	}
	p.manifest = "push " + repo + " manifest " + Digest(t, img).String()
	return p
}

// wantOnceBefore checks that every key of first arrived exactly once, and
// before every key of then.
func wantOnceBefore(t *testing.T, h *hook, first, then []string) {
	t.Helper()
	got := h.keys()
	last := -1
	for _, k := range first {
		if n := h.count(k); n != 1 {
			t.Errorf("%s arrived %d times, want once (got %v)", k, n, got)
		}
		last = max(last, slices.Index(got, k))
	}
	for _, k := range then {
		if i := slices.Index(got, k); i >= 0 && i < last {
			t.Errorf("%s arrived before the end of %v (got %v)", k, first, got)
		}
	}
}

func heldIDs(f *Faults) []string {
	var out []string
	for _, n := range f.HeldNotifications() {
		out = append(out, n.ID)
	}
	return out
}

func heldHas(f *Faults, m Match) bool { return slices.ContainsFunc(f.HeldNotifications(), m) }

// TestFaultsPassThrough checks that without faults the notifications
// arrive once each, in the registry's order, stamped with the instance.
func TestFaultsPassThrough(t *testing.T) {
	h := newHook(t)
	r := Start(t, Options{NotifyURL: h.URL})
	a := push(t, r, "a:1")
	b := push(t, r, "b:1")
	h.await(t, b.manifest)

	wantOnceBefore(t, h, a.all(), b.all())
	wantOnceBefore(t, h, b.all(), nil)
	_, port, _ := net.SplitHostPort(r.Host)
	evs, _ := h.events()
	var lastA time.Time // a's blobs upload concurrently: only a's push as a whole precedes b's
	for _, e := range evs {
		if e.Source.InstanceID != r.InstanceID {
			t.Errorf("event %s: instance %q, want %q", e.ID, e.Source.InstanceID, r.InstanceID)
		}
		if !strings.HasSuffix(e.Source.Addr, ":"+port) {
			t.Errorf("event %s: source addr %q, want port %s", e.ID, e.Source.Addr, port)
		}
		switch k := key(e); {
		case slices.Contains(a.all(), k) && e.Timestamp.After(lastA):
			lastA = e.Timestamp
		case slices.Contains(b.all(), k) && e.Timestamp.Before(lastA):
			t.Errorf("%s stamped %s, before a's last event at %s", k, e.Timestamp, lastA)
		}
	}
	// The relay counts a delivery once the endpoint has answered.
	WaitFor(t, "deliveries counted", func() bool { return r.Faults.Stats().Forwarded >= len(evs) })
	if s := r.Faults.Stats(); s.Dropped+s.Held+s.Refused+s.Duplicated+s.Failed != 0 {
		t.Errorf("stats %+v after %d events", s, len(evs))
	}
}

// TestFaultsHold checks late notifications: held, then released in order.
func TestFaultsHold(t *testing.T) {
	t.Run("release", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.Hold()
		a := push(t, r, "a:1")
		b := push(t, r, "b:1")
		WaitFor(t, "b's manifest push held", func() bool { return heldHas(r.Faults, ManifestPush("b")) })
		if got := h.keys(); len(got) > 0 {
			t.Fatalf("delivered while held: %v", got)
		}
		held := heldIDs(r.Faults)
		if n := r.Faults.Release(); n != len(held) {
			t.Errorf("Release() = %d, want %d", n, len(held))
		}
		h.await(t, b.manifest)
		if got := h.ids(); !slices.Equal(got[:min(len(got), len(held))], held) {
			t.Errorf("delivered %v, want the held order %v", got, held)
		}
		wantOnceBefore(t, h, a.all(), b.all())
		if s := r.Faults.Stats(); s.Held < len(held) || r.Faults.Held() != 0 {
			t.Errorf("stats %+v, %d still held, after holding %d", s, r.Faults.Held(), len(held))
		}
		c := push(t, r, "c:1") // the hold ended
		h.await(t, c.manifest)
	})

	t.Run("release n", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.Hold()
		push(t, r, "a:1")
		WaitFor(t, "a's manifest push held", func() bool { return heldHas(r.Faults, ManifestPush("a")) })
		first := heldIDs(r.Faults)
		if n := r.Faults.ReleaseN(2); n != 2 {
			t.Fatalf("ReleaseN(2) = %d", n)
		}
		WaitFor(t, "two released", func() bool { return len(h.ids()) == 2 })
		if got := h.ids(); !slices.Equal(got, first[:2]) {
			t.Errorf("delivered %v, want %v", got, first[:2])
		}
		if got := r.Faults.Held(); got != len(first)-2 {
			t.Errorf("Held() = %d, want %d", got, len(first)-2)
		}
		b := push(t, r, "b:1") // still held
		WaitFor(t, "b's manifest push held", func() bool { return heldHas(r.Faults, ManifestPush("b")) })
		all := append(first[:2:2], heldIDs(r.Faults)...)
		if got := h.ids(); len(got) != 2 {
			t.Errorf("delivered %v while holding", got)
		}
		r.Faults.Release()
		h.await(t, b.manifest)
		if got := h.ids(); !slices.Equal(got[:min(len(got), len(all))], all) {
			t.Errorf("delivered %v, want %v", got, all)
		}
	})

	t.Run("drop held", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.Hold()
		a := push(t, r, "a:1")
		WaitFor(t, "a's manifest push held", func() bool { return heldHas(r.Faults, ManifestPush("a")) })
		n := r.Faults.DropHeld()
		if n < len(a.all()) || r.Faults.Held() != 0 {
			t.Errorf("DropHeld() = %d, Held() = %d; pushed %d", n, r.Faults.Held(), len(a.all()))
		}
		if got := r.Faults.Release(); got != 0 {
			t.Errorf("Release() after DropHeld = %d", got)
		}
		b := push(t, r, "b:1")
		h.await(t, b.manifest)
		for _, k := range a.all() {
			if h.index(k) >= 0 {
				t.Errorf("dropped %s arrived", k)
			}
		}
		if s := r.Faults.Stats(); s.Dropped != n {
			t.Errorf("stats %+v, want %d dropped", s, n)
		}
	})

	t.Run("scoped", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.Where(ManifestPush("late")).Hold()
		late := push(t, r, "late:1")
		other := push(t, r, "other:1")
		h.await(t, other.manifest)
		if got := r.Faults.Held(); got != 1 {
			t.Errorf("Held() = %d, want 1", got)
		}
		if h.index(late.manifest) >= 0 {
			t.Errorf("held %s arrived", late.manifest)
		}
		wantOnceBefore(t, h, late.blobs, other.all())
		r.Faults.Release()
		h.await(t, late.manifest)
		if i, j := h.index(late.manifest), h.index(other.manifest); i < j {
			t.Errorf("late manifest push at %d, before the later push's %d", i, j)
		}
	})
}

// TestFaultsDrop checks lost notifications: exactly the chosen ones.
func TestFaultsDrop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fault   func(*Faults)
		lost    func(x pushed) []string
		dropped int
	}{
		{"manifest push of one repo", func(f *Faults) { f.Where(ManifestPush("x")).Drop(1) },
			func(x pushed) []string { return []string{x.manifest} }, 1},
		{"every blob push of one repo", func(f *Faults) { f.Where(BlobPush("x")).DropFraction(1, rand.New(rand.NewPCG(1, 2))) },
			func(x pushed) []string { return x.blobs }, 2},
		{"the next two", func(f *Faults) { f.Drop(2) },
			func(x pushed) []string { return x.blobs }, 2},
		{"none at fraction zero", func(f *Faults) { f.DropFraction(0, rand.New(rand.NewPCG(1, 2))) },
			func(pushed) []string { return nil }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHook(t)
			r := Start(t, Options{NotifyURL: h.URL})
			tc.fault(r.Faults)
			x := push(t, r, "x:1")
			y := push(t, r, "y:1")
			h.await(t, y.manifest)
			lost := tc.lost(x)
			for _, k := range x.all() {
				if got, want := h.count(k), 1; slices.Contains(lost, k) {
					if got != 0 {
						t.Errorf("dropped %s arrived", k)
					}
				} else if got != want {
					t.Errorf("%s arrived %d times", k, got)
				}
			}
			wantOnceBefore(t, h, y.all(), nil)
			if s := r.Faults.Stats(); s.Dropped != tc.dropped {
				t.Errorf("stats %+v, want %d dropped", s, tc.dropped)
			}
		})
	}

	t.Run("count is consumed", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.Where(ManifestPush("x")).Drop(1)
		first := push(t, r, "x:1")
		second := push(t, r, "x:2")
		h.await(t, second.manifest)
		if h.index(first.manifest) >= 0 {
			t.Errorf("dropped %s arrived", first.manifest)
		}
	})
}

// TestFaultsDuplicate checks duplicated notifications: the same event
// twice in a row, byte for byte.
func TestFaultsDuplicate(t *testing.T) {
	h := newHook(t)
	r := Start(t, Options{NotifyURL: h.URL})
	r.Faults.Where(ManifestPush("d")).Duplicate(1)
	d := push(t, r, "d:1")
	e := push(t, r, "e:1")
	h.await(t, e.manifest)

	keys := h.keys()
	evs, raw := h.events()
	i := slices.Index(keys, d.manifest)
	if i < 0 || i+1 >= len(keys) || keys[i+1] != d.manifest {
		t.Fatalf("%s not delivered twice in a row: %v", d.manifest, keys)
	}
	if evs[i].ID != evs[i+1].ID || !bytes.Equal(raw[i], raw[i+1]) {
		t.Errorf("copies differ: %s and %s", raw[i], raw[i+1])
	}
	if n := h.count(d.manifest); n != 2 {
		t.Errorf("%s arrived %d times, want 2", d.manifest, n)
	}
	wantOnceBefore(t, h, d.blobs, e.all())
	wantOnceBefore(t, h, e.all(), nil)
	if s := r.Faults.Stats(); s.Duplicated != 1 {
		t.Errorf("stats %+v, want 1 duplicated", s)
	}
}

// TestFaultsRefuse checks an endpoint refusing for a while: the registry
// retries, its queue waits, and after Accept everything arrives once, in
// order.
func TestFaultsRefuse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		code  int
		scope Match
	}{
		{"unavailable", http.StatusServiceUnavailable, nil},
		{"unauthorized", http.StatusUnauthorized, nil},
		{"only a's manifest push", http.StatusServiceUnavailable, ManifestPush("a")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHook(t)
			r := Start(t, Options{NotifyURL: h.URL})
			r.Faults.Where(tc.scope).Refuse(tc.code)
			a := push(t, r, "a:1")
			b := push(t, r, "b:1")
			WaitFor(t, "retries", func() bool { return r.Faults.Stats().Refused >= 5 })
			if tc.scope != nil {
				wantOnceBefore(t, h, a.blobs, nil)
			}
			if got := h.keys(); slices.ContainsFunc(got, func(k string) bool {
				return k == a.manifest || slices.Contains(b.all(), k)
			}) {
				t.Errorf("delivered while refused: %v", got)
			}
			r.Faults.Accept()
			h.await(t, b.manifest)
			wantOnceBefore(t, h, a.all(), b.all())
			wantOnceBefore(t, h, b.all(), nil)
			if s := r.Faults.Stats(); s.Failed != 0 || s.Dropped != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestFaultsShiftTime checks that timestamps follow the test's clock, and
// that a refused event keeps the offset of its first arrival.
func TestFaultsShiftTime(t *testing.T) {
	const day = 24 * time.Hour
	within := func(t *testing.T, what string, got, from, to time.Time) {
		t.Helper()
		if got.Before(from.Add(-time.Second)) || got.After(to.Add(time.Second)) {
			t.Errorf("%s stamped %s, want within [%s, %s]", what, got, from, to)
		}
	}

	t.Run("pass through", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		r.Faults.ShiftTime(func() time.Duration { return 3 * day })
		before := time.Now()
		a := push(t, r, "a:1")
		after := time.Now()
		h.await(t, a.manifest)
		evs, _ := h.events()
		for _, e := range evs {
			within(t, key(e), e.Timestamp, before.Add(3*day), after.Add(3*day))
			if e.Source.InstanceID != r.InstanceID || e.Target.Repository != "a" {
				t.Errorf("event %s changed: %+v", e.ID, e)
			}
		}
	})

	t.Run("refused keeps its first offset", func(t *testing.T) {
		h := newHook(t)
		r := Start(t, Options{NotifyURL: h.URL})
		var offset atomic.Int64
		offset.Store(int64(3 * day))
		r.Faults.ShiftTime(func() time.Duration { return time.Duration(offset.Load()) })
		r.Faults.Refuse(http.StatusServiceUnavailable)
		before := time.Now()
		a := push(t, r, "a:1")
		after := time.Now()
		WaitFor(t, "a refusal", func() bool { return r.Faults.Stats().Refused > 0 })
		offset.Store(int64(5 * day))
		r.Faults.Accept()
		h.await(t, a.manifest)
		evs, _ := h.events()
		within(t, "the first event, refused", evs[0].Timestamp, before.Add(3*day), after.Add(3*day))
		i := h.index(a.manifest)
		within(t, "the manifest push, first seen later", evs[i].Timestamp, before.Add(5*day), after.Add(5*day))
	})
}

// TestShiftTimestamps checks that only the events' own timestamps change,
// byte for byte.
func TestShiftTimestamps(t *testing.T) {
	const (
		ts1 = `"2026-03-01T10:00:00.123456789+01:00"`
		ts2 = `"2026-03-01T09:00:00Z"`
	)
	shifted1 := `"2026-03-01T11:00:00.123456789+01:00"`
	shifted2 := `"2026-03-01T11:00:00Z"`
	for _, tc := range []struct{ name, in, want string }{
		{"indented, unknown fields",
			"{\n   \"events\": [\n      {\n         \"id\": \"e1\",\n         \"timestamp\": " + ts1 +
				",\n         \"extra\": {\"timestamp\": " + ts2 + "},\n         \"action\": \"push\"\n      }\n   ],\n   \"more\": 1\n}",
			"{\n   \"events\": [\n      {\n         \"id\": \"e1\",\n         \"timestamp\": " + shifted1 +
				",\n         \"extra\": {\"timestamp\": " + ts2 + "},\n         \"action\": \"push\"\n      }\n   ],\n   \"more\": 1\n}"},
		{"compact, two events",
			`{"events":[{"timestamp":` + ts1 + `,"id":"e1"},{"id":"e2","timestamp":` + ts2 + `}]}`,
			`{"events":[{"timestamp":` + shifted1 + `,"id":"e1"},{"id":"e2","timestamp":` + shifted2 + `}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := shiftTimestamps([]byte(tc.in), func(i int) time.Duration { return time.Duration(i+1) * time.Hour })
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	if _, err := shiftTimestamps([]byte(`{"events":[{"timestamp":"yesterday"}]}`), func(int) time.Duration { return 0 }); err == nil {
		t.Error("a malformed timestamp was shifted")
	}
}

// TestRuleFraction checks that a fractional rule draws only for the
// notifications in its scope, at about its rate.
func TestRuleFraction(t *testing.T) {
	r := &rule{kind: ruleDrop, match: On("push", "x"), p: 0.25, rng: rand.New(rand.NewPCG(7, 7))}
	in, out := []Notification{{Action: "push", Repository: "x"}}, []Notification{{Action: "push", Repository: "y"}}
	fired := 0
	for range 10000 {
		if r.fires(out) {
			t.Fatal("fired out of scope")
		}
		if r.fires(in) {
			fired++
		}
	}
	if fired < 2200 || fired > 2800 {
		t.Errorf("fired %d of 10000 at p=0.25", fired)
	}
}

// TestFaultsReplicas checks that replicas over one storage are distinct
// instances with their own faults: holding one delivers the other's later
// notifications first.
func TestFaultsReplicas(t *testing.T) {
	h := newHook(t)
	r1 := Start(t, Options{NotifyURL: h.URL})
	r2 := r1.Replica(t)
	if r1.Root != r2.Root || r1.InstanceID == r2.InstanceID || r1.Faults == r2.Faults || r1.Host == r2.Host {
		t.Fatalf("replica shares too much or too little: %+v and %+v", r1, r2)
	}
	a := push(t, r1, "a:1")
	b := push(t, r2, "b:1")
	h.await(t, a.manifest)
	h.await(t, b.manifest)
	if got := r2.ManifestStatus(t, "a", "1"); got != http.StatusOK {
		t.Errorf("replica answers %d for the first's push", got)
	}
	evs, _ := h.events()
	source := map[string]distribution.DistributionSource{}
	for _, e := range evs {
		source[key(e)] = e.Source
	}
	sa, sb := source[a.manifest], source[b.manifest]
	if sa.InstanceID != r1.InstanceID || sb.InstanceID != r2.InstanceID || sa.InstanceID == sb.InstanceID {
		t.Errorf("instance ids %q and %q, want %q and %q", sa.InstanceID, sb.InstanceID, r1.InstanceID, r2.InstanceID)
	}
	if sa.Addr == sb.Addr {
		t.Errorf("both replicas send source.addr %q", sa.Addr)
	}

	r1.Faults.Hold()
	c := push(t, r1, "c:1")
	WaitFor(t, "c's manifest push held", func() bool { return heldHas(r1.Faults, ManifestPush("c")) })
	d := push(t, r2, "d:1")
	h.await(t, d.manifest)
	r1.Faults.Release()
	h.await(t, c.manifest)
	wantOnceBefore(t, h, d.all(), c.all())
}

// TestFaultsEndOfTest checks that when the test ends the relay lets go of
// what it holds and acknowledges whatever the registry still sends.
func TestFaultsEndOfTest(t *testing.T) {
	var r *Registry
	t.Run("test", func(t *testing.T) {
		h := newHook(t)
		r = Start(t, Options{NotifyURL: h.URL})
		r.Faults.Hold()
		push(t, r, "a:1")
		WaitFor(t, "a's manifest push held", func() bool { return heldHas(r.Faults, ManifestPush("a")) })
		r.Faults.Refuse(http.StatusServiceUnavailable)
	})
	if n, p := r.Faults.Held(), r.Faults.Pending(); n != 0 || p != 0 {
		t.Errorf("after the test: %d held, %d pending", n, p)
	}
	before := r.Faults.Stats()
	resp, err := http.Post(r.Config.Notifications.Endpoints[0].URL, distribution.DistributionEventsMediaType,
		strings.NewReader(`{"events":[{"id":"late","action":"push"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after the test the relay answers %d", resp.StatusCode)
	}
	if after := r.Faults.Stats(); after != before {
		t.Errorf("stats moved after the test: %+v, then %+v", before, after)
	}
}
