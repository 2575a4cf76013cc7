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
// A second, optional operation restores a tag from the owner's time
// machine (`refgc restore REPO:TAG` for a tag the owner keeps): the same
// request of tag items, on the subject RestoreSubject(deleteSubject); the
// owner makes each tag current again in its database, publishes the
// tag.set as for any change, and answers StatusRestored with that tag.set
// in Statements (the collector publishes it too, so that the restore is
// visible at once), StatusAbsent when it keeps no recoverable lifetime of
// the tag, or StatusRefused. An owner without it leaves restores to its
// own interface.
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
	"slices"
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
	// StatusRestored answers a restore only.
	StatusRestored Status = "restored"
)

// deleteStatuses and restoreStatuses are the answers each operation may give.
var (
	deleteStatuses  = []Status{StatusDeleted, StatusAbsent, StatusInUse, StatusRefused}
	restoreStatuses = []Status{StatusRestored, StatusAbsent, StatusRefused}
)

// ErrNotTag is returned (wrapped) for a restore request naming anything
// but tags.
var ErrNotTag = errors.New("owner: a restore names tags only")

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

// RestoreSubject is the restore subject beside a deletion subject: its
// ".delete" suffix replaced by ".restore" (or ".restore" appended).
func RestoreSubject(deleteSubject string) string {
	return strings.TrimSuffix(deleteSubject, ".delete") + ".restore"
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

// validateRestore checks a restore request: a valid request of tags.
func (r *Request) validateRestore() error {
	if err := r.Validate(); err != nil {
		return err
	}
	for i, it := range r.Items {
		if it.Node.Kind != events.NodeTag {
			return fmt.Errorf("%w: items[%d] is a %s", ErrNotTag, i, it.Node.Kind)
		}
	}
	return nil
}

// check verifies a response against its request: every result answers an
// item of the request, once, with a status of the operation (allowed);
// statements validate.
func (resp *Response) check(req Request, allowed []Status) error {
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
		switch {
		case !slices.Contains(allowed, r.Status):
			return fmt.Errorf("%w: results[%d]: status %q does not answer this request", ErrProtocol, i, r.Status)
		case r.Status == StatusInUse || r.Status == StatusRestored:
			for j := range r.Statements {
				e := r.Statements[j]
				if e.ID == "" {
					e.ID = "statement" // the collector gives it its own
				}
				if err := e.Validate(); err != nil {
					return fmt.Errorf("%w: results[%d].statements[%d]: %w", ErrProtocol, i, j, err)
				}
			}
		}
	}
	return nil
}

// Client asks one owner over NATS. It implements the collector's Owner.
type Client struct {
	nc      *nats.Conn
	source  string
	subject string
	restore string
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
	return &Client{nc: nc, source: source, subject: subject, restore: RestoreSubject(subject), timeout: timeout}, nil
}

// Subject returns the subject the client sends its requests to.
func (c *Client) Subject() string { return c.subject }

// Delete sends one request for items and returns the owner's results, or
// an error (a timeout, no owner listening, a service error, a response
// that breaks the contract): then no item may be taken as deleted.
func (c *Client) Delete(ctx context.Context, items []Item) ([]Result, error) {
	return c.call(ctx, c.subject, items, deleteStatuses)
}

// Restore asks the owner to make tags current again, from its time
// machine (items name tags), and returns its results, or an error as
// Delete does: then no tag may be taken as restored.
func (c *Client) Restore(ctx context.Context, items []Item) ([]Result, error) {
	for i, it := range items {
		if it.Node.Kind != events.NodeTag {
			return nil, fmt.Errorf("%w: items[%d] is a %s", ErrNotTag, i, it.Node.Kind)
		}
	}
	return c.call(ctx, c.restore, items, restoreStatuses)
}

func (c *Client) call(ctx context.Context, subject string, items []Item, allowed []Status) ([]Result, error) {
	req := Request{V: Version, Source: c.source, Items: items}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("owner: encode request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, fmt.Errorf("%w: %s %s: %s", ErrOwner, subject, code, msg.Header.Get(micro.ErrorHeader))
	}
	var resp Response
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrProtocol, subject, err)
	}
	if err := resp.check(req, allowed); err != nil {
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
	// Restore, if set, answers restore requests on RestoreSubject(Subject).
	Restore Handler
}

// AddService runs an owner's deletion service on nc (and its restore
// endpoint, with cfg.Restore): it decodes and validates each request,
// calls the handler, and replies. Requests of another source, or that do
// not validate, get a 400 service error; a handler error a 500. Stop the
// returned service to stop serving.
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
	handle := func(handler Handler, validate func(*Request) error) micro.Handler {
		return micro.ContextHandler(context.Background(), func(ctx context.Context, r micro.Request) {
			var req Request
			if err := json.Unmarshal(r.Data(), &req); err != nil {
				_ = r.Error("400", "undecodable request: "+err.Error(), nil)
				return
			}
			if err := validate(&req); err != nil {
				_ = r.Error("400", err.Error(), nil)
				return
			}
			if req.Source != cfg.Source {
				_ = r.Error("400", fmt.Sprintf("this service owns the objects of source %q, not %q", cfg.Source, req.Source), nil)
				return
			}
			resp, err := handler(ctx, req)
			if err != nil {
				_ = r.Error("500", err.Error(), nil)
				return
			}
			resp.V = Version
			_ = r.RespondJSON(resp)
		})
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        cfg.Name,
		Version:     cfg.Version,
		Description: "deletes objects of " + cfg.Source + " that refgc's collector found unreferenced",
		Endpoint: &micro.EndpointConfig{
			Subject: cfg.Subject,
			Handler: handle(cfg.Handler, (*Request).Validate),
		},
	})
	if err != nil || cfg.Restore == nil {
		return svc, err
	}
	if err := svc.AddEndpoint("restore", handle(cfg.Restore, (*Request).validateRestore),
		micro.WithEndpointSubject(RestoreSubject(cfg.Subject))); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("owner: restore endpoint: %w", err)
	}
	return svc, nil
}
