// Package owner is the contract between refgc's collector and a registry
// that keeps objects in its own database: its tags, manifests, blobs,
// labels and legacy images (the Quay model). refgc cannot delete those by
// storage path, so the collector asks their owner to, over a NATS service
// (nats.go/micro, request and reply), and commits the removal only on the
// owner's answer. docs/OWNERS.md describes it for registry developers.
//
// One request carries one batch: every object of a collector round that
// goes to that owner. Each item names a node and the intent id the
// collector recorded for it; the owner answers every item:
//
//   - StatusDeleted: it deleted the object (now, or for this intent before);
//   - StatusAbsent: it holds no such object (never did, or deleted it earlier);
//   - StatusInUse: it still uses the object, and says why in Statements,
//     events in refgc's envelope that state what holds it; the collector
//     publishes them as corrections;
//   - StatusRefused: it will not delete it now, for another reason.
//
// Invariants an owner keeps (the collector relies on them):
//   - It checks use and deletes in one transaction of its own database, as
//     Quay's gc.py does: an object something holds is never deleted,
//     whatever refgc's projection said.
//   - Answers are idempotent by intent id: the same request sent again
//     (the collector retries after a timeout) gets the same answer, and
//     deletes nothing twice.
//   - A request it cannot read gets a micro error; an item it does not
//     answer, or a timeout, leaves the collector's intent to retry.
package owner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/refgc/refgc/events"
)

// Version is the version of the request and response this package writes
// and the newest it reads.
const Version = 1

// SubjectPrefix starts the default request subject of every owner.
const SubjectPrefix = "refgc.owner."

// DefaultTimeout is how long the collector waits for an owner's answer.
const DefaultTimeout = 10 * time.Second

// MaxItems bounds the items of one request; a collector round never has more.
const MaxItems = 4096

// Status is an owner's answer about one item.
type Status string

// The statuses.
const (
	StatusDeleted Status = "deleted"
	StatusAbsent  Status = "absent"
	StatusInUse   Status = "in_use"
	StatusRefused Status = "refused"
)

// ErrProtocol is returned (wrapped) for a response that breaks the contract.
var ErrProtocol = errors.New("owner: response breaks the contract")

// ErrOwner is returned (wrapped) when the owner answered with a service error.
var ErrOwner = errors.New("owner: service error")

// Item is one object the collector asks the owner to delete.
type Item struct {
	// Intent is the collector's intent id: the idempotency key.
	Intent string `json:"intent"`
	// Node is the object, as the owner's events named it.
	Node events.NodeRef `json:"node"`
}

// Request is one batch.
type Request struct {
	V int `json:"v"`
	// Source is the event source whose objects these are.
	Source string `json:"source"`
	Items  []Item `json:"items"`
}

// Result is the owner's answer about one item.
type Result struct {
	Intent string `json:"intent"`
	Status Status `json:"status"`
	// Reason is a short lower-case code for StatusInUse and StatusRefused
	// ("manifest_label", "locked", …); it becomes a metric label.
	Reason string `json:"reason,omitempty"`
	// Detail is for people (logs).
	Detail string `json:"detail,omitempty"`
	// Statements, with StatusInUse, are events that state what holds the
	// object now (a label.attached per manifest that carries a label, a
	// legacy.created of a child image, a manifest.pushed naming it). Their
	// ids are replaced by the collector's; their times should be the
	// owner's time of the check.
	Statements []events.Event `json:"statements,omitempty"`
}

// Response answers a Request: one Result per item, in any order.
type Response struct {
	V       int      `json:"v"`
	Results []Result `json:"results"`
}

// DefaultSubject is the request subject of the owner of source's objects:
// SubjectPrefix, the source with characters NATS reserves replaced by '_',
// and ".delete".
func DefaultSubject(source string) string {
	clean := strings.Map(func(r rune) rune {
		if r <= ' ' || r == '.' || r == '*' || r == '>' || r > '~' {
			return '_'
		}
		return r
	}, source)
	return SubjectPrefix + clean + ".delete"
}

// Validate checks a request as an owner receives it.
func (r *Request) Validate() error {
	if r.V < 1 || r.V > Version {
		return fmt.Errorf("owner: unsupported request version %d", r.V)
	}
	if len(r.Items) == 0 || len(r.Items) > MaxItems {
		return fmt.Errorf("owner: a request has 1 to %d items, not %d", MaxItems, len(r.Items))
	}
	seen := make(map[string]bool, len(r.Items))
	for i, it := range r.Items {
		if !events.ValidEventID(it.Intent) || seen[it.Intent] {
			return fmt.Errorf("owner: items[%d]: missing, malformed or repeated intent id", i)
		}
		seen[it.Intent] = true
		if err := it.Node.Validate(); err != nil {
			return fmt.Errorf("owner: items[%d]: %w", i, err)
		}
	}
	return nil
}

// check verifies a response against its request: every result answers an
// item of the request, once, with a known status; statements validate.
func (resp *Response) check(req Request) error {
	if resp.V < 1 || resp.V > Version {
		return fmt.Errorf("%w: version %d", ErrProtocol, resp.V)
	}
	asked := make(map[string]bool, len(req.Items))
	for _, it := range req.Items {
		asked[it.Intent] = true
	}
	for i, r := range resp.Results {
		if !asked[r.Intent] {
			return fmt.Errorf("%w: results[%d]: intent %q was not asked or is answered twice", ErrProtocol, i, r.Intent)
		}
		asked[r.Intent] = false
		switch r.Status {
		case StatusDeleted, StatusAbsent, StatusRefused:
		case StatusInUse:
			for j := range r.Statements {
				e := r.Statements[j]
				if e.ID == "" {
					e.ID = "statement" // the collector gives it its own
				}
				if err := e.Validate(); err != nil {
					return fmt.Errorf("%w: results[%d].statements[%d]: %w", ErrProtocol, i, j, err)
				}
			}
		default:
			return fmt.Errorf("%w: results[%d]: unknown status %q", ErrProtocol, i, r.Status)
		}
	}
	return nil
}

// Client asks one owner over NATS. It implements the collector's Owner.
type Client struct {
	nc      *nats.Conn
	source  string
	subject string
	timeout time.Duration
}

// NewClient returns a client for the owner of source's objects, at subject
// (DefaultSubject(source) if empty), waiting timeout (DefaultTimeout if
// zero) for each answer.
func NewClient(nc *nats.Conn, source, subject string, timeout time.Duration) (*Client, error) {
	if nc == nil || source == "" {
		return nil, errors.New("owner: NewClient needs a connection and a source")
	}
	if subject == "" {
		subject = DefaultSubject(source)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{nc: nc, source: source, subject: subject, timeout: timeout}, nil
}

// Subject returns the subject the client sends its requests to.
func (c *Client) Subject() string { return c.subject }

// Delete sends one request for items and returns the owner's results, or
// an error (a timeout, no owner listening, a service error, a response
// that breaks the contract): then no item may be taken as deleted.
func (c *Client) Delete(ctx context.Context, items []Item) ([]Result, error) {
	req := Request{V: Version, Source: c.source, Items: items}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("owner: encode request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, c.subject, data)
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", c.subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, fmt.Errorf("%w: %s %s: %s", ErrOwner, c.subject, code, msg.Header.Get(micro.ErrorHeader))
	}
	var resp Response
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrProtocol, c.subject, err)
	}
	if err := resp.check(req); err != nil {
		return nil, err
	}
	return resp.Results, nil
}

// Handler is what an owner implements: answer one valid request. An
// error answers the whole request with a service error (the collector
// retries later); answer what can be answered instead where possible.
type Handler func(ctx context.Context, req Request) (Response, error)

// ServiceConfig configures AddService.
type ServiceConfig struct {
	// Source is the event source whose objects the service owns.
	Source string
	// Subject to listen on; DefaultSubject(Source) if empty.
	Subject string
	// Name of the micro service (letters, digits, '-' and '_');
	// "refgc-owner" if empty.
	Name string
	// Version of the service, semantic; "1.0.0" if empty.
	Version string
	// Handler answers the requests.
	Handler Handler
}

// AddService runs an owner's deletion service on nc: it decodes and
// validates each request, calls the handler, and replies. Requests of
// another source, or that do not validate, get a 400 service error; a
// handler error a 500. Stop the returned service to stop serving.
func AddService(nc *nats.Conn, cfg ServiceConfig) (micro.Service, error) {
	if cfg.Source == "" || cfg.Handler == nil {
		return nil, errors.New("owner: AddService needs a Source and a Handler")
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject(cfg.Source)
	}
	if cfg.Name == "" {
		cfg.Name = "refgc-owner"
	}
	if cfg.Version == "" {
		cfg.Version = "1.0.0"
	}
	handle := func(ctx context.Context, r micro.Request) {
		var req Request
		if err := json.Unmarshal(r.Data(), &req); err != nil {
			_ = r.Error("400", "undecodable request: "+err.Error(), nil)
			return
		}
		if err := req.Validate(); err != nil {
			_ = r.Error("400", err.Error(), nil)
			return
		}
		if req.Source != cfg.Source {
			_ = r.Error("400", fmt.Sprintf("this service owns the objects of source %q, not %q", cfg.Source, req.Source), nil)
			return
		}
		resp, err := cfg.Handler(ctx, req)
		if err != nil {
			_ = r.Error("500", err.Error(), nil)
			return
		}
		resp.V = Version
		_ = r.RespondJSON(resp)
	}
	return micro.AddService(nc, micro.Config{
		Name:        cfg.Name,
		Version:     cfg.Version,
		Description: "deletes objects of " + cfg.Source + " that refgc's collector found unreferenced",
		Endpoint: &micro.EndpointConfig{
			Subject: cfg.Subject,
			Handler: micro.ContextHandler(context.Background(), handle),
		},
	})
}
