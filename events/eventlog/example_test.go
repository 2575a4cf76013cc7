package eventlog_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
)

// A registry publishes its own events to refgc's event log from Go: it
// connects to refgc's NATS server, and publishes each change with the
// Publisher, which validates the event and deduplicates it by id. Here
// the server is an embedded one; a registry connects to refgc's
// (--nats-listen, its token) or to the NATS both use.
func ExamplePublisher() {
	dir, _ := os.MkdirTemp("", "refgc-example")
	defer os.RemoveAll(dir)
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: -1, Token: "secret"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Shutdown()

	ctx := context.Background()
	nc, err := eventlog.Connect(srv.ClientURL(), eventlog.ConnectOptions{Token: "secret", Name: "my-registry"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// refgc creates the stream when it starts; a test (as here) does it itself.
	if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
		fmt.Println(err)
		return
	}
	pub, _ := eventlog.NewPublisher(js, eventlog.PublisherConfig{})

	m := digest.FromString("a manifest")
	ev := events.Event{
		ID:     "my-registry-tag-4711", // stable: a retry publishes the same id
		Time:   time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC),
		Source: "my-registry",
		Kind:   events.TagSet,
		Tag:    &events.Tag{Repo: "team/app", Name: "v1", Digest: m, Expires: time.Date(2026, 11, 15, 0, 0, 0, 0, time.UTC)},
	}
	first, err := pub.Publish(ctx, ev)
	if err != nil {
		fmt.Println(err)
		return
	}
	again, _ := pub.Publish(ctx, ev) // a retry after a lost answer
	fmt.Println("subject:", eventlog.Subject(ev))
	fmt.Println("sequence:", first.Seq, "retry is a duplicate:", again.Duplicate, again.Seq == first.Seq)
	// Output:
	// subject: refgc.events.tag_set.team.app
	// sequence: 1 retry is a duplicate: true true
}
