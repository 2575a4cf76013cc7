package eventlog_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

func TestLeaderTakeover(t *testing.T) {
	for _, how := range []string{"stops", "crashes"} {
		t.Run("the leader "+how, func(t *testing.T) {
			emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(emb.Shutdown)
			type inst struct {
				l    *eventlog.Leader
				nc   *nats.Conn
				stop context.CancelFunc
				done chan struct{}
			}
			start := func(id string) inst {
				t.Helper()
				nc, err := eventlog.Connect(emb.ClientURL(), eventlog.ConnectOptions{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				js, _ := jetstream.New(nc)
				l, err := eventlog.NewLeader(context.Background(), js, eventlog.LeaderConfig{ID: id, TTL: 600 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = l.Run(ctx) }()
				t.Cleanup(func() { cancel(); <-done })
				return inst{l, nc, cancel, done}
			}
			waitFor := func(what string, cond func() bool) { t.Helper(); regtest.WaitFor(t, what, cond) }
			a := start("a")
			waitFor("a to lead", a.l.IsLeader)
			b := start("b")
			// While a renews, b campaigns and never leads.
			waitFor("b to campaign three times", func() bool {
				if b.l.IsLeader() {
					t.Fatal("two leaders")
				}
				return b.l.Campaigns() >= 3
			})
			if !a.l.IsLeader() {
				t.Fatal("a lost the lead while alive")
			}
			if how == "stops" {
				a.stop() // gives the key up on its way out
				<-a.done
			} else {
				a.nc.Close() // cut off: its renewals fail, the key expires
			}
			waitFor("a to step down", func() bool { return !a.l.IsLeader() })
			waitFor("b to take over", b.l.IsLeader)
		})
	}
}
