package eventlog_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

func TestPublishDuplicate(t *testing.T) {
	_, js, s := setup(t)
	reg := prometheus.NewRegistry()
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{Registerer: reg}))
	ctx := ctxT(t, 10*time.Second)
	e := testEvent(1)
	first, err := pub.Publish(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || first.Seq != 1 {
		t.Fatalf("first publish = %+v", first)
	}
	again, err := pub.Publish(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("second publish = %+v, want a duplicate of sequence %d", again, first.Seq)
	}
	// Also through the batch path, and within one batch.
	res, err := pub.PublishBatch(ctx, []events.Event{e, testEvent(2), testEvent(2)})
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Duplicate || res[1].Duplicate || !res[2].Duplicate || res[2].Seq != res[1].Seq {
		t.Fatalf("batch results %+v", res)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2", info.State.Msgs)
	}
	// The message carries the event id and decodes to the event.
	m, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != e.ID {
		t.Errorf("Nats-Msg-Id = %q, want %q", got, e.ID)
	}
	if m.Subject != eventlog.Subject(e) {
		t.Errorf("subject %q, want %q", m.Subject, eventlog.Subject(e))
	}
	got, err := events.Decode(m.Data)
	if err != nil || got.ID != e.ID || got.Blob.Digest != e.Blob.Digest {
		t.Errorf("stored event %+v, %v", got, err)
	}
	if v := testutil.ToFloat64(counterOf(t, reg, "refgc_events_duplicate_total")); v != 3 {
		t.Errorf("duplicate counter = %v, want 3", v)
	}
	if v := testutil.ToFloat64(counterOf(t, reg, "refgc_events_published_total")); v != 2 {
		t.Errorf("published counter = %v, want 2", v)
	}
}

func TestPublishInvalid(t *testing.T) {
	_, js, s := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	ctx := ctxT(t, 10*time.Second)
	bad := testEvent(5)
	bad.Blob.Repo = "Not/Valid"
	if _, err := pub.Publish(ctx, bad); !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("Publish(invalid) = %v, want ErrInvalid", err)
	}
	if _, err := pub.PublishAsync(bad); !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("PublishAsync(invalid) = %v, want ErrInvalid", err)
	}
	if _, err := pub.PublishBatch(ctx, []events.Event{testEvent(1), bad, testEvent(2)}); !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("PublishBatch with an invalid event = %v, want ErrInvalid", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("stream holds %d messages after invalid publishes, want 0", info.State.Msgs)
	}
}

func TestPublishAsyncAndBatch(t *testing.T) {
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{MaxInflight: 16}))
	ctx := ctxT(t, 30*time.Second)
	f, err := pub.PublishAsync(testEvent(0))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ack := <-f.Ok():
		if ack.Sequence != 1 {
			t.Fatalf("async ack at %d", ack.Sequence)
		}
	case err := <-f.Err():
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	res, err := pub.PublishBatch(ctx, testEvents(1, 500))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Duplicate || r.Seq != uint64(i+2) {
			t.Fatalf("result %d = %+v, want sequence %d", i, r, i+2)
		}
	}
	if res, err := pub.PublishBatch(ctx, nil); err != nil || len(res) != 0 {
		t.Fatalf("empty batch = %v, %v", res, err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := pub.PublishBatch(cancelled, testEvents(600, 3)); !errors.Is(err, context.Canceled) {
		t.Fatalf("PublishBatch with a cancelled context = %v", err)
	}
}

func TestDeadLetter(t *testing.T) {
	_, js, _ := setup(t)
	reg := prometheus.NewRegistry()
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{Registerer: reg}))
	ctx := ctxT(t, 10*time.Second)
	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	body := []byte(`{"events":[{"bogus":true}]}`)
	d := eventlog.DeadLetter{ID: "abc-1", Source: "registry.example.com:5000", Reason: "invalid",
		Detail: "line one\nline two", Body: body, Time: when}
	if err := pub.DeadLetter(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := pub.DeadLetter(ctx, d); err != nil { // deduplicated by id
		t.Fatal(err)
	}
	if err := pub.DeadLetter(ctx, eventlog.DeadLetter{Reason: "Free text, not a code", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, eventlog.DefaultDeadLetterStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("dead-letter stream holds %d messages, want 2", n)
	}
	m, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "refgc.deadletter.registry~example~com:5000" {
		t.Errorf("subject %q", m.Subject)
	}
	if !bytes.Equal(m.Data, body) {
		t.Errorf("body %q", m.Data)
	}
	for h, want := range map[string]string{
		eventlog.HeaderDeadLetterReason: "invalid",
		eventlog.HeaderDeadLetterDetail: "line one line two",
		eventlog.HeaderDeadLetterSource: "registry.example.com:5000",
		eventlog.HeaderDeadLetterID:     "abc-1",
		eventlog.HeaderDeadLetterTime:   "2025-03-04T05:06:07Z",
	} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	m2, err := s.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Subject != "refgc.deadletter._" {
		t.Errorf("subject without a source: %q", m2.Subject)
	}
	for reason, want := range map[string]float64{"invalid": 2, "other": 1} {
		if got := labelled(t, reg, "refgc_events_dead_lettered_total", "reason", reason); got != want {
			t.Errorf("dead letters with reason %q = %v, want %v", reason, got, want)
		}
	}
}

// labelled returns the value of the series of a counter with label = value.
func labelled(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestPublisherSharedRegistry: two publishers on one registry share the counters.
func TestPublisherSharedRegistry(t *testing.T) {
	_, js, _ := setup(t)
	reg := prometheus.NewRegistry()
	a := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{Registerer: reg}))
	b := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{Registerer: reg}))
	ctx := ctxT(t, 10*time.Second)
	if _, err := a.Publish(ctx, testEvent(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, testEvent(2)); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(counterOf(t, reg, "refgc_events_published_total")); v != 2 {
		t.Errorf("published counter = %v, want 2", v)
	}
}
