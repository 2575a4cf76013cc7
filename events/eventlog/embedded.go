package eventlog

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/refgc/refgc/events"
)

// EmbeddedConfig configures an in-process nats-server with JetStream, for
// single-node deployments and tests.
type EmbeddedConfig struct {
	// StoreDir holds JetStream's files (required). Restarting on the same
	// directory recovers every stream.
	StoreDir string
	// Host to listen on; 127.0.0.1 if empty. Use 0.0.0.0 (or a routable
	// address) when publishers run elsewhere, such as a registry sidecar.
	Host string
	// Port to listen on; 4222 if zero, a random free port if -1.
	Port int
	// Token, if set, is required of every client.
	Token string
	// ServerName; derived from the address if empty.
	ServerName string
	// MaxStore and MaxMemory bound JetStream's file and memory use; zero
	// lets the server choose.
	MaxStore  int64
	MaxMemory int64
	// ReadyTimeout bounds the wait for the server to accept clients; 10 s if zero.
	ReadyTimeout time.Duration
	// Logger receives the server's notices, warnings and errors; nil discards them.
	Logger *slog.Logger
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a nats-server with JetStream in this process and
// waits until it accepts clients.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("events: embedded server: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 4222
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.Port > 0 {
		// The server reports a taken port only in its log and then never
		// gets ready: try the address first, for an error that says so.
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
		if err != nil {
			return nil, fmt.Errorf("events: embedded server: %w (another NATS server or refgc listens there? choose another address)", err)
		}
		ln.Close()
	}
	opts := &server.Options{
		ServerName:         cfg.ServerName,
		Host:               cfg.Host,
		Port:               cfg.Port,
		Authorization:      cfg.Token,
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		JetStreamMaxStore:  cfg.MaxStore,
		JetStreamMaxMemory: cfg.MaxMemory,
		MaxPayload:         events.MaxEncodedSize + 64<<10, // the largest event, with its headers
		NoSigs:             true,
		NoLog:              cfg.Logger == nil,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("events: embedded server: %w", err)
	}
	if cfg.Logger != nil {
		srv.SetLoggerV2(slogAdapter{cfg.Logger.With("component", "nats-server")}, false, false, false)
	}
	go srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("events: embedded server on %s:%d not ready within %s", cfg.Host, cfg.Port, cfg.ReadyTimeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("events: embedded server started without JetStream")
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the URL clients connect to, with the port actually bound.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Port is the port actually bound (useful with Port -1).
func (e *Embedded) Port() int {
	if a, ok := e.srv.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// Shutdown stops the server and waits until it has stopped; JetStream's
// files are flushed and stay in StoreDir.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// Server exposes the underlying server, for monitoring and tests.
func (e *Embedded) Server() *server.Server { return e.srv }

// slogAdapter routes the embedded server's log to slog; its notices (the
// start-up banner, listening addresses) go to debug, so that refgc's own
// start-up line is what an operator sees.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }

// ConnectOptions are the client-side settings of a connection to NATS.
// Every credential is passed through unchanged; files are read by the
// client library when connecting.
type ConnectOptions struct {
	Token        string
	User         string
	Password     string
	CredsFile    string // a user JWT and nkey seed (.creds)
	NKeySeedFile string
	TLSCAFile    string
	TLSCertFile  string // with TLSKeyFile: a client certificate
	TLSKeyFile   string
	Name         string // the connection name shown by the server
	// Logger receives disconnect, reconnect and error notices; nil discards them.
	Logger *slog.Logger
}

// ReconnectBufSize is the client-side buffer for publishes made while
// disconnected; they are sent on reconnect.
const ReconnectBufSize = 64 << 20

// Connect connects to NATS with opts and the reconnect behaviour the event
// log needs: reconnect for ever, every 250 ms with jitter, buffering
// publishes meanwhile. A Follower relies on this: with finite reconnects
// the connection closes for good after an outage and Run returns an error.
func Connect(url string, opts ConnectOptions) (*nats.Conn, error) {
	o, err := connectOptions(opts)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, o...)
	if err != nil {
		return nil, fmt.Errorf("events: connect to %s: %w", url, err)
	}
	return nc, nil
}

func connectOptions(opts ConnectOptions) ([]nats.Option, error) {
	o := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(ReconnectBufSize),
		nats.Timeout(5 * time.Second),
	}
	if opts.Name != "" {
		o = append(o, nats.Name(opts.Name))
	}
	if opts.Token != "" {
		o = append(o, nats.Token(opts.Token))
	}
	if opts.User != "" || opts.Password != "" {
		o = append(o, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.CredsFile != "" {
		o = append(o, nats.UserCredentials(opts.CredsFile))
	}
	if opts.NKeySeedFile != "" {
		nk, err := nats.NkeyOptionFromSeed(opts.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("events: nkey seed: %w", err)
		}
		o = append(o, nk)
	}
	if opts.TLSCAFile != "" {
		o = append(o, nats.RootCAs(opts.TLSCAFile))
	}
	if opts.TLSCertFile != "" || opts.TLSKeyFile != "" {
		if opts.TLSCertFile == "" || opts.TLSKeyFile == "" {
			return nil, errors.New("events: a TLS client certificate needs both TLSCertFile and TLSKeyFile")
		}
		o = append(o, nats.ClientCert(opts.TLSCertFile, opts.TLSKeyFile))
	}
	if l := opts.Logger; l != nil {
		o = append(o,
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
				l.Warn("nats disconnected", "url", nc.ConnectedUrlRedacted(), "err", err)
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				l.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			}),
			nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
				subj := ""
				if sub != nil {
					subj = sub.Subject
				}
				l.Error("nats error", "subject", subj, "err", err)
			}),
			nats.ClosedHandler(func(*nats.Conn) { l.Info("nats connection closed") }),
		)
	}
	return o, nil
}
