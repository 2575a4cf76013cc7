// Package jstest is test support: an embedded NATS server with JetStream,
// started for one test and stopped by its cleanup.
package jstest

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
)

// Start runs an embedded server on a free port, with its store under
// t.TempDir(), and returns a JetStream context connected to it. Everything
// stops when the test ends.
func Start(t testing.TB) (jetstream.JetStream, *eventlog.Embedded) {
	t.Helper()
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := eventlog.Connect(srv.ClientURL(), eventlog.ConnectOptions{Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js, srv
}
