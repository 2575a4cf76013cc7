package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
)

// OwnerConfig routes the objects one event source states to the registry
// that owns them in its own database (docs/OWNERS.md). In YAML:
//
//	owners:
//	  - source: quay
//	    kinds: [tag, manifest, layer, blob, label, legacy]   # empty: all
//	    subject: refgc.owner.quay.delete                     # the default for the source
//	    timeout: 10s
type OwnerConfig struct {
	// Source is the event source whose nodes go to this owner.
	Source string `yaml:"source"`
	// Kinds are the node kinds the owner deletes; empty means all. The
	// source's other kinds go to storage (manifests, layer links, blobs)
	// or are bookkeeping (labels, legacy images).
	Kinds []events.NodeKind `yaml:"kinds"`
	// Subject of the owner's deletion service; owner.DefaultSubject(Source) if empty.
	Subject string `yaml:"subject"`
	// Timeout of one request; owner.DefaultTimeout if zero.
	Timeout time.Duration `yaml:"timeout"`
}

var ownerKinds = []events.NodeKind{events.NodeTag, events.NodeManifest, events.NodeLayer, events.NodeBlob,
	events.NodeLabel, events.NodeLegacy}

// validateOwners checks the owners section.
func validateOwners(owners []OwnerConfig) error {
	seen := map[string]bool{}
	for i, o := range owners {
		switch {
		case o.Source == "":
			return fmt.Errorf("%w: owners[%d]: source is empty", ErrConfig, i)
		case seen[o.Source]:
			return fmt.Errorf("%w: owners[%d]: source %q has two owners", ErrConfig, i, o.Source)
		case o.Timeout < 0:
			return fmt.Errorf("%w: owners[%d]: negative timeout", ErrConfig, i)
		}
		seen[o.Source] = true
		for _, k := range o.Kinds {
			if !slices.Contains(ownerKinds, k) {
				return fmt.Errorf("%w: owners[%d]: unknown node kind %q (want one of %v)", ErrConfig, i, k, ownerKinds)
			}
		}
	}
	return nil
}

// owners builds the collector's routes over the daemon's NATS connection.
func (d *Daemon) owners() (map[string]collector.OwnerRoute, error) {
	if len(d.cfg.Owners) == 0 {
		return nil, nil
	}
	routes := make(map[string]collector.OwnerRoute, len(d.cfg.Owners))
	for _, o := range d.cfg.Owners {
		c, err := owner.NewClient(d.nc, o.Source, o.Subject, o.Timeout)
		if err != nil {
			return nil, fmt.Errorf("daemon: owner of %s: %w", o.Source, err)
		}
		routes[o.Source] = collector.OwnerRoute{Owner: c, Kinds: o.Kinds}
	}
	return routes, nil
}

// ownedBy reports whether an owner deletes the nodes of kind that origin
// stated (the collector's routing, from the configuration alone).
func (d *Daemon) ownedBy(origin string, kind events.NodeKind) bool {
	i := slices.IndexFunc(d.cfg.Owners, func(o OwnerConfig) bool { return o.Source == origin })
	if name, _, instance := strings.Cut(origin, ":"); i < 0 && instance {
		i = slices.IndexFunc(d.cfg.Owners, func(o OwnerConfig) bool { return o.Source == name }) // "quay:replica-1"
	}
	return i >= 0 && (len(d.cfg.Owners[i].Kinds) == 0 || slices.Contains(d.cfg.Owners[i].Kinds, kind))
}

// validateOwnersOnly checks that a collector without storage has an owner
// for every object it may be asked to delete: an owner of every kind for
// each configured source, and no Distribution registry (whose objects are
// files in the storage it lacks).
func (c *Config) validateOwnersOnly() error {
	if !c.Collector.OwnersOnly {
		return nil
	}
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: collector.ownersOnly: %s", ErrConfig, fmt.Sprintf(f, a...))
	}
	switch {
	case c.Storage != nil:
		return bad("storage is configured too: give one or the other")
	case len(c.Owners) == 0:
		return bad("no owners: nothing could be deleted")
	case c.Webhook.authenticated() || c.Webhook.RegistryURL != "":
		return bad("a Distribution registry is configured (webhook token or registry URL): its objects live in storage")
	}
	for _, o := range c.Owners {
		if len(o.Kinds) == 0 {
			continue
		}
		for _, k := range ownerKinds {
			if !slices.Contains(o.Kinds, k) {
				return bad("the owner of %s does not take %s: it would have nowhere to go (give it every kind, or configure storage)", o.Source, k)
			}
		}
	}
	for _, s := range c.Native.Sources {
		if !slices.ContainsFunc(c.Owners, func(o OwnerConfig) bool { return o.Source == s.Name }) {
			return bad("native source %s has no owner", s.Name)
		}
	}
	return nil
}

// liftPausesWithoutStorage is the collector's reconcile hook when there is
// no storage to walk (Collector.OwnersOnly): a pause says the graph may
// miss what a refused or lost event stated, and with every object owned
// the owners' own transactions are what keep a deletion from taking
// anything still used (an object the graph wrongly finds unreferenced is
// answered in_use, and its statements correct the graph). So the pause is
// lifted by a Reconciled event as of now, without a walk, and said so.
func (d *Daemon) liftPausesWithoutStorage(ctx context.Context, repos []string) error {
	seq, err := d.jslog.CatchUp(ctx)
	if err != nil {
		return err
	}
	d.log.Warn("owners only: lifting a collection pause without a storage walk; the owners check every deletion",
		"repositories", repos)
	now := d.now().UTC()
	ev := events.Event{V: events.Version, ID: fmt.Sprintf("owners-reconcile-%d-%d", seq, now.UnixNano()), Time: now,
		Source: "refgc", Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: seq, Repos: repos}}
	if err := d.jslog.Publish(ctx, []events.Event{ev}); err != nil {
		return err
	}
	_, err = d.jslog.CatchUp(ctx)
	return err
}
