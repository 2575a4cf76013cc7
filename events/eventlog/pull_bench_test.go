package eventlog_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

// BenchmarkPulls measures what a pull costs once the webhook has turned it
// into a Touched event: one op is one pull of content whose lease is fresh
// (1,000 images pushed first, pulled in turn, a millisecond apart). Each
// pull is published alone, as the webhook publishes a notification, and
// a follower applies them into a refcount projection (fsync on unless
// -refcount.nosync). Reported: the event log's growth per pull (the
// stream's bytes over its messages: the encoded event and JetStream's own
// record), the projection's pages written per pull, and pulls/s from the
// first publish to the last apply.
func BenchmarkPulls(b *testing.B) {
	const images = 1000
	js, s := benchSetup(b)
	p := benchProjection(b)
	f := followerFor(b, js, nil, func(c *eventlog.FollowerConfig) {
		c.Cursor, c.Bind = p.Cursor, p.BindStream
		c.Apply = func(batch []events.Record) error {
			_, err := p.Apply(batch)
			return err
		}
	})
	stop := runFollower(b, f)
	ctx := ctxT(b, 10*time.Minute)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	man := func(i int) digest.Digest { return digest.FromString(fmt.Sprintf("pull-manifest-%d", i%images)) }
	var push []events.Event
	for i := range images {
		push = append(push, events.Event{ID: fmt.Sprintf("push-%d", i), Time: t0, Source: "bench", Kind: events.ManifestPushed,
			Manifest: &events.Manifest{Repo: "team/app", Digest: man(i), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 500}})
	}
	if _, err := pub.PublishBatch(ctx, push); err != nil {
		b.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.WaitApplied(ctx, info.State.LastSeq); err != nil {
		b.Fatal(err)
	}
	bytes0, msgs0, w0 := info.State.Bytes, info.State.Msgs, p.PageWrites()
	b.ResetTimer()
	start := time.Now()
	var last uint64
	for i := range b.N {
		ev := events.Event{ID: fmt.Sprintf("pull-%d", i), Time: t0.Add(time.Duration(i) * time.Millisecond), Source: "bench",
			Received: t0.Add(time.Duration(i) * time.Millisecond), Kind: events.Touched, Ref: &events.RepoDigest{Repo: "team/app", Digest: man(i)}}
		res, err := pub.PublishBatch(ctx, []events.Event{ev})
		if err != nil {
			b.Fatal(err)
		}
		last = res[0].Seq
	}
	if err := f.WaitApplied(ctx, last); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pulls/s")
	b.StopTimer()
	info, err = s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	perPull := float64(info.State.Bytes-bytes0) / float64(info.State.Msgs-msgs0)
	b.ReportMetric(perPull, "log-bytes/pull")
	b.ReportMetric(perPull*1e6/(1<<20), "log-MiB/Mpulls")
	b.ReportMetric(float64(p.PageWrites()-w0)/float64(b.N), "pages/pull")
	if err := stop(); err != nil {
		b.Fatal(err)
	}
}
