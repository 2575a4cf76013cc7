package regtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"
)

// Faults injects delivery faults into the notifications of one registry
// instance. It sits in the relay between the registry and the test's
// endpoint (Options.NotifyURL); every registry started here has its own,
// as Registry.Faults. Without faults the relay passes every notification
// through and answers the registry with the endpoint's status.
//
// Invariants:
//   - A notification (one POST of the registry, one event with Distribution
//     v3.1.2) is, on each arrival, either refused (answered with the refusal
//     code and not forwarded: the registry retries it and its queue waits),
//     or acknowledged with 200 and dropped, or acknowledged with 200 and
//     held, or forwarded once or, duplicated, twice. Refusal is decided
//     first, then drop, then duplication, then hold.
//   - The relay forwards one delivery at a time, from one outbound queue:
//     pass-through notifications in arrival order, released ones in their
//     held order after what was queued before the release, a duplicate right
//     after its original. Nothing is forwarded ahead of a queued delivery.
//   - A pass-through notification is answered with the endpoint's status
//     for its first delivery, so an endpoint that refuses makes the registry
//     retry, as without faults. A delivery already acknowledged to the
//     registry (released, or a duplicate's second copy) is retried by the
//     relay until the endpoint accepts it or the test ends.
//   - Hold and Refuse last until Release and Accept; Drop and Duplicate
//     apply to a count of notifications or to a fraction drawn from the
//     caller's rand.Rand, until Clear.
//   - ShiftTime moves the timestamp of each event by the offset read when
//     the relay first sees that event (a refused event keeps its first
//     offset on retry). The timestamp's bytes are the only ones changed.
//   - When the test ends, the relay acknowledges and drops everything:
//     what it holds, what it queues, and what the registry still sends.
//
// All methods are safe for concurrent use.
type Faults struct {
	target string
	client *http.Client
	ctx    context.Context // canceled when the test ends
	cancel context.CancelFunc

	shift atomic.Pointer[func() time.Duration]

	mu      sync.Mutex
	wake    *sync.Cond // on mu: the queue grew, or the relay stopped
	stopped bool
	rules   []*rule
	held    []*parcel
	queue   []*parcel // outbound; the head is in flight
	offsets map[string]time.Duration
	stats   Stats
}

// Stats counts what the relay did with the registry's notifications.
type Stats struct {
	// Received counts the registry's POSTs, retries included.
	Received int
	// Refused counts the POSTs answered with a refusal code.
	Refused int
	// Dropped counts notifications acknowledged and discarded, by a drop
	// rule or by DropHeld.
	Dropped int
	// Held counts notifications ever put on hold.
	Held int
	// Forwarded counts deliveries the endpoint accepted (2xx), duplicate
	// copies included.
	Forwarded int
	// Duplicated counts second copies the endpoint accepted.
	Duplicated int
	// Failed counts deliveries the endpoint did not accept or that failed.
	Failed int
}

// RetryBackoff is how long the relay waits before it retries a delivery
// that it already acknowledged to the registry and the endpoint refused.
const RetryBackoff = 50 * time.Millisecond

type ruleKind int

const (
	ruleRefuse ruleKind = iota
	ruleDrop
	ruleDuplicate
	ruleHold
)

// rule is one fault: modal (Refuse, Hold) until lifted, counted (n > 0
// left), or a fraction p drawn from rng.
type rule struct {
	kind  ruleKind
	match Match // nil matches everything
	modal bool
	n     int
	p     float64
	rng   *rand.Rand
	code  int // for ruleRefuse
}

// fires reports whether the rule applies to a notification with events ns,
// consuming one of its count.
func (r *rule) fires(ns []Notification) bool {
	if r.match != nil && !matchesAny(r.match, ns) {
		return false
	}
	switch {
	case r.modal:
		return true
	case r.rng != nil:
		return r.rng.Float64() < r.p
	case r.n > 0:
		r.n--
		return true
	}
	return false
}

func matchesAny(m Match, ns []Notification) bool {
	for _, n := range ns {
		if m(n) {
			return true
		}
	}
	return false
}

// parcel is one notification on its way to the endpoint.
type parcel struct {
	body   []byte
	header http.Header
	events []Notification // as decoded on arrival
	ids    []string
	copies int // deliveries still owed
	sent   int // deliveries the endpoint accepted

	// waiting is set while the registry's request waits for the answer of
	// the first delivery, on reply, within ctx.
	waiting bool
	reply   chan int
	ctx     context.Context
	refund  *rule // the counted duplicate rule to refund if never delivered
}

func newFaults(target string) *Faults {
	ctx, cancel := context.WithCancel(context.Background())
	f := &Faults{
		target:  target,
		client:  &http.Client{Timeout: 10 * time.Second},
		ctx:     ctx,
		cancel:  cancel,
		offsets: map[string]time.Duration{},
	}
	f.wake = sync.NewCond(&f.mu)
	return f
}

// listen starts the relay's listener and forwarder and returns its URL.
// The listener is never closed: the registry's notification goroutines
// outlive the test and must keep finding a 2xx answer.
func (f *Faults) listen() string {
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	go f.forward()
	return srv.URL
}

// Scope is a subset of a registry's notifications that faults apply to.
type Scope struct {
	f     *Faults
	match Match
}

// Where returns the scope of the notifications m matches (nil: all), to
// set faults on: f.Where(ManifestPush("app")).Drop(1).
func (f *Faults) Where(m Match) Scope { return Scope{f: f, match: m} }

// Drop acknowledges and discards the next n notifications in scope.
func (s Scope) Drop(n int) { s.add(&rule{kind: ruleDrop, n: n}) }

// DropFraction acknowledges and discards each notification in scope with
// probability p, drawn from rng (which the relay uses under its lock),
// until Clear.
func (s Scope) DropFraction(p float64, rng *rand.Rand) {
	s.add(&rule{kind: ruleDrop, p: p, rng: mustRand("DropFraction", p, rng)})
}

// Duplicate forwards the next n notifications in scope twice, the copy
// right after the original.
func (s Scope) Duplicate(n int) { s.add(&rule{kind: ruleDuplicate, n: n}) }

// DuplicateFraction forwards each notification in scope twice with
// probability p, drawn from rng, until Clear.
func (s Scope) DuplicateFraction(p float64, rng *rand.Rand) {
	s.add(&rule{kind: ruleDuplicate, p: p, rng: mustRand("DuplicateFraction", p, rng)})
}

// Hold acknowledges the notifications in scope at once and keeps them, in
// order, until Release or ReleaseN: late notifications, while the registry
// goes on. Notifications out of scope still pass, ahead of the held ones.
func (s Scope) Hold() { s.add(&rule{kind: ruleHold, modal: true}) }

// Refuse answers code, without forwarding, to every notification in scope
// until Accept: the registry retries it, and its queue waits behind it.
// The code must be one the registry does not accept (not 2xx or 3xx).
func (s Scope) Refuse(code int) {
	if code >= 200 && code < 400 {
		panic(fmt.Sprintf("regtest: Refuse(%d): the registry accepts 2xx and 3xx answers", code))
	}
	s.add(&rule{kind: ruleRefuse, modal: true, code: code})
}

func (s Scope) add(r *rule) {
	r.match = s.match
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.rules = append(s.f.rules, r)
}

func mustRand(what string, p float64, rng *rand.Rand) *rand.Rand {
	if rng == nil || p < 0 || p > 1 {
		panic(fmt.Sprintf("regtest: %s(%v, %v): want 0 <= p <= 1 and a rand.Rand", what, p, rng))
	}
	return rng
}

// Drop acknowledges and discards the next n notifications.
func (f *Faults) Drop(n int) { f.Where(nil).Drop(n) }

// DropFraction discards each notification with probability p; see Scope.
func (f *Faults) DropFraction(p float64, rng *rand.Rand) { f.Where(nil).DropFraction(p, rng) }

// Duplicate forwards the next n notifications twice.
func (f *Faults) Duplicate(n int) { f.Where(nil).Duplicate(n) }

// DuplicateFraction duplicates each notification with probability p; see Scope.
func (f *Faults) DuplicateFraction(p float64, rng *rand.Rand) {
	f.Where(nil).DuplicateFraction(p, rng)
}

// Hold acknowledges every notification and keeps it until Release.
func (f *Faults) Hold() { f.Where(nil).Hold() }

// Refuse answers code to every notification until Accept.
func (f *Faults) Refuse(code int) { f.Where(nil).Refuse(code) }

// Accept lifts every refusal.
func (f *Faults) Accept() { f.lift(ruleRefuse) }

// Clear removes every drop and duplicate rule, counted or fractional.
func (f *Faults) Clear() {
	f.lift(ruleDrop)
	f.lift(ruleDuplicate)
}

func (f *Faults) lift(kind ruleKind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.liftLocked(kind)
}

func (f *Faults) liftLocked(kind ruleKind) {
	kept := f.rules[:0]
	for _, r := range f.rules {
		if r.kind != kind {
			kept = append(kept, r)
		}
	}
	clear(f.rules[len(kept):])
	f.rules = kept
}

// Release ends every hold and queues what is held, in order, for
// forwarding ahead of any later notification. It returns how many it
// released; it does not wait for their delivery (see Pending).
func (f *Faults) Release() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.liftLocked(ruleHold)
	return f.releaseLocked(len(f.held))
}

// ReleaseN queues the first n held notifications for forwarding, in
// order, and keeps holding. It returns how many it released.
func (f *Faults) ReleaseN(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.releaseLocked(n)
}

func (f *Faults) releaseLocked(n int) int {
	n = min(max(n, 0), len(f.held))
	if f.stopped || n == 0 {
		return 0
	}
	f.queue = append(f.queue, f.held[:n]...)
	f.held = append(f.held[:0:0], f.held[n:]...)
	f.wake.Broadcast()
	return n
}

// DropHeld discards what is held, as a registry restart loses its
// in-memory queue, and returns how many. Holds stay in force.
func (f *Faults) DropHeld() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.held)
	f.held = nil
	f.stats.Dropped += n
	return n
}

// Held returns how many notifications are held.
func (f *Faults) Held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// HeldNotifications returns the events of the held notifications, in order.
func (f *Faults) HeldNotifications() []Notification {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Notification
	for _, p := range f.held {
		out = append(out, p.events...)
	}
	return out
}

// Pending returns how many notifications are queued for forwarding, the
// one in flight included.
func (f *Faults) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queue)
}

// Stats returns the counters.
func (f *Faults) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// ShiftTime rewrites the timestamp of every later event by adding
// offset(), read when the relay first sees the event; nil stops the
// rewriting. Tests with a fake clock pass its distance from the wall clock,
// so that the registry's timestamps follow the fake clock. offset must not
// call methods of Faults.
func (f *Faults) ShiftTime(offset func() time.Duration) {
	if offset == nil {
		f.shift.Store(nil)
		return
	}
	f.shift.Store(&offset)
}

// stop acknowledges and drops everything from now on.
func (f *Faults) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.cancel()
	for _, p := range f.queue {
		if p.waiting {
			p.waiting = false
			p.reply <- http.StatusOK
		}
	}
	f.queue, f.held, f.rules = nil, nil, nil
	f.wake.Broadcast()
}

// serve is the relay's handler for the registry's POSTs.
func (f *Faults) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		w.WriteHeader(http.StatusOK)
		return
	}
	code, p := f.admit(req.Context(), body, req.Header)
	if p == nil {
		w.WriteHeader(code)
		return
	}
	select {
	case code := <-p.reply:
		w.WriteHeader(code)
	case <-req.Context().Done():
	}
}

// admit decides the fate of one arrival. It returns the answer to give at
// once, or the parcel whose first delivery gives it.
func (f *Faults) admit(ctx context.Context, body []byte, header http.Header) (int, *parcel) {
	var offset time.Duration
	fn := f.shift.Load()
	if fn != nil {
		offset = (*fn)()
	}
	ns, _ := decodeNotifications(body) // an undecodable body matches only unscoped rules

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return http.StatusOK, nil
	}
	f.stats.Received++
	ids := make([]string, len(ns))
	for i, n := range ns {
		ids[i] = n.ID
	}
	if fn != nil {
		for _, id := range ids {
			if _, ok := f.offsets[id]; !ok {
				f.offsets[id] = offset
			}
		}
	}
	if r := f.firstLocked(ruleRefuse, ns); r != nil {
		f.stats.Refused++
		return r.code, nil
	}
	if fn != nil && len(ns) > 0 {
		if b, err := shiftTimestamps(body, func(i int) time.Duration { return f.offsets[ids[i]] }); err == nil {
			body = b
		}
	}
	if f.firstLocked(ruleDrop, ns) != nil {
		f.stats.Dropped++
		f.forgetLocked(ids)
		return http.StatusOK, nil
	}
	p := &parcel{body: body, header: header.Clone(), events: ns, ids: ids, copies: 1}
	if r := f.firstLocked(ruleDuplicate, ns); r != nil {
		p.copies = 2
		if !r.modal && r.rng == nil {
			p.refund = r
		}
	}
	if f.firstLocked(ruleHold, ns) != nil {
		f.stats.Held++
		f.held = append(f.held, p)
		f.forgetLocked(ids)
		return http.StatusOK, nil
	}
	p.waiting, p.reply, p.ctx = true, make(chan int, 1), ctx
	f.queue = append(f.queue, p)
	f.wake.Broadcast()
	return 0, p
}

// firstLocked returns the first rule of kind that fires on ns.
func (f *Faults) firstLocked(kind ruleKind, ns []Notification) *rule {
	for _, r := range f.rules {
		if r.kind == kind && r.fires(ns) {
			return r
		}
	}
	return nil
}

// forgetLocked drops the time offsets of events the registry saw acknowledged.
func (f *Faults) forgetLocked(ids []string) {
	for _, id := range ids {
		delete(f.offsets, id)
	}
}

// forward delivers the outbound queue, head first, until the relay stops.
func (f *Faults) forward() {
	for {
		f.mu.Lock()
		for !f.stopped && len(f.queue) == 0 {
			f.wake.Wait()
		}
		if f.stopped {
			f.mu.Unlock()
			return
		}
		p := f.queue[0]
		if p.waiting && p.ctx.Err() != nil {
			// The registry gave up on this attempt; it sends the event again.
			f.popLocked(p)
			f.mu.Unlock()
			continue
		}
		ctx := f.ctx
		if p.waiting {
			ctx = p.ctx
		}
		f.mu.Unlock()

		code, err := f.post(ctx, p)

		f.mu.Lock()
		if f.stopped {
			f.mu.Unlock()
			return
		}
		if err == nil && code >= 200 && code < 300 {
			f.stats.Forwarded++
			if p.sent > 0 {
				f.stats.Duplicated++
			}
			p.sent++
			p.copies--
			if p.waiting {
				p.waiting = false
				p.reply <- code
				f.forgetLocked(p.ids)
			}
			if p.copies == 0 {
				f.queue = f.queue[1:]
			}
			f.mu.Unlock()
			continue
		}
		f.stats.Failed++
		if p.waiting {
			if err != nil {
				code = http.StatusBadGateway
			}
			p.reply <- code
			f.popLocked(p)
			f.mu.Unlock()
			continue
		}
		f.mu.Unlock()
		select {
		case <-time.After(RetryBackoff):
		case <-f.ctx.Done():
		}
	}
}

// popLocked removes the head parcel p, whose first delivery the registry
// no longer waits for; a counted duplication it was given goes back to
// its rule, as the registry's retry is decided anew.
func (f *Faults) popLocked(p *parcel) {
	p.waiting = false
	f.queue = f.queue[1:]
	if p.refund != nil && p.sent == 0 {
		p.refund.n++
	}
}

// post makes one delivery of p to the endpoint.
func (f *Faults) post(ctx context.Context, p *parcel) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.target, bytes.NewReader(p.body))
	if err != nil {
		return 0, fmt.Errorf("regtest: relay: %w", err)
	}
	for k, v := range p.header {
		req.Header[k] = v
	}
	req.Header.Del("Content-Length")
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("regtest: relay: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
