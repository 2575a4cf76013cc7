package daemon

import (
	"fmt"
	"slices"
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
	for _, o := range d.cfg.Owners {
		if o.Source == origin {
			return len(o.Kinds) == 0 || slices.Contains(o.Kinds, kind)
		}
	}
	return false
}
