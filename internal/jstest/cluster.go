package jstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
)

// Cluster is a JetStream cluster of nats-servers running in this process,
// clustered over loopback routes, as a three-node deployment runs them on
// three machines.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	servers []*server.Server
	opts    []*server.Options
}

// freePorts reserves n loopback ports and releases them for the servers
// (which need each other's route ports before any starts).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}

// StartCluster runs n servers (at least 3 for quorum after a loss) with
// JetStream, stores under t.TempDir(), and waits until the cluster has a
// meta leader that sees every server online. Everything stops when the
// test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	routes := freePorts(t, n)
	var urls []string
	for _, p := range routes {
		urls = append(urls, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			MaxPayload: events.MaxEncodedSize + 64<<10,
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "refgc", Host: "127.0.0.1", Port: routes[i]},
			Routes:     server.RoutesFromStr(strings.Join(urls, ",")),
		}
		c.opts = append(c.opts, o)
		c.servers = append(c.servers, nil)
		c.start(i)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, s := range c.servers {
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
	})
	c.waitFor("a JetStream meta leader that sees every peer", func() bool { return c.peers() == n })
	return c
}

// peers is how many servers the JetStream meta leader sees online (0
// without a leader): streams can be placed on that many.
func (c *Cluster) peers() int {
	for _, s := range c.live() {
		if s.JetStreamIsLeader() {
			return len(s.JetStreamClusterPeers())
		}
	}
	return 0
}

func (c *Cluster) start(i int) {
	c.t.Helper()
	s, err := server.NewServer(c.opts[i])
	if err != nil {
		c.t.Fatalf("jstest: server %d: %v", i, err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		c.t.Fatalf("jstest: server %d not ready", i)
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
}

func (c *Cluster) live() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*server.Server
	for _, s := range c.servers {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

func (c *Cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	regtest.WaitFor(c.t, "jstest: "+what, cond)
}

// URL is every server's client URL, comma-separated, as clients are
// given a cluster.
func (c *Cluster) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var urls []string
	for _, s := range c.servers {
		if s != nil {
			urls = append(urls, s.ClientURL())
		}
	}
	return strings.Join(urls, ",")
}

// StreamLeader returns the index of the server that leads the stream's
// replicas, or -1.
func (c *Cluster) StreamLeader(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.servers {
		if s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// Kill stops server i at once, as a machine that dies.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts server i again on its store, rejoining the cluster.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.start(i)
}

// WaitStreamLeader waits until some server leads the stream and returns it.
func (c *Cluster) WaitStreamLeader(stream string) int {
	c.t.Helper()
	var i int
	c.waitFor("a leader of stream "+stream, func() bool { i = c.StreamLeader(stream); return i >= 0 })
	return i
}
