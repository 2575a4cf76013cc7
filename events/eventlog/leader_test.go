package eventlog_test

import (
	"context"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

func TestLeaderTakeover(t *testing.T) {
	for _, how := range []string{"stops", "crashes", "hangs"} {
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
			var gate *frozenProxy // a's way to the server, when it hangs
			start := func(id string) inst {
				t.Helper()
				url := emb.ClientURL()
				if how == "hangs" && id == "a" {
					gate = newFrozenProxy(t, url)
					url = gate.URL()
				}
				nc, err := eventlog.Connect(url, eventlog.ConnectOptions{})
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
			} else if how == "crashes" {
				a.nc.Close() // cut off: its renewals fail, the key expires
			} else {
				gate.freeze() // its renewals hang: no answer, no error
			}
			waitFor("b to take over", func() bool {
				if a.l.IsLeader() && b.l.IsLeader() {
					t.Fatal("two leaders")
				}
				return b.l.IsLeader()
			})
			if a.l.IsLeader() {
				t.Fatal("two leaders")
			}
		})
	}
}

// frozenProxy forwards TCP connections to a server until frozen; then it
// forwards nothing more and closes nothing, as a server that hangs.
type frozenProxy struct {
	ln     net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFrozenProxy(t *testing.T, serverURL string) *frozenProxy {
	t.Helper()
	target, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &frozenProxy{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target.Host)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go p.pipe(c, s)
			go p.pipe(s, c)
		}
	}()
	return p
}

func (p *frozenProxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *frozenProxy) freeze() { p.frozen.Store(true) }

// pipe copies from src to dst while not frozen; once frozen, what it read
// is dropped and nothing more is written.
func (p *frozenProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if p.frozen.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
