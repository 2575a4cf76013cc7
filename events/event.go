// Package events defines what every participant of refgc shares: the domain
// events, the versioned envelope that every change to the reference graph
// travels in, its kinds, node references, validation and encoding, and the
// parsing of manifests into their references.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the event: events/distribution turns registry
// notifications into events, events/eventlog carries them (JetStream), the
// refcount projection folds them, and the collector and its reconciler
// write events of their own. It depends on nothing but go-digest and the
// OCI image-spec.
//
// Invariants:
//   - An Event that passed Validate names only repositories and tags of the
//     distribution reference grammar and only digests that go-digest parses,
//     so nothing built from it (bbolt keys, storage paths) can hold "..", a
//     leading "/", upper case or a NUL byte.
//   - Events are statements of state, not increments: applying one twice, or
//     replaying the whole log, yields the same projection.
//   - The envelope carries a Version. Decode refuses versions newer than
//     Version with ErrUnsupportedVersion and ignores fields it does not know,
//     so older readers fail loudly and newer fields never break them silently.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Version is the envelope version this package writes and the newest it reads.
const Version = 1

// MaxEncodedSize bounds one encoded event; Decode refuses larger input.
// It holds the ManifestPushed of the largest manifest a registry with
// Distribution's default 4 MiB limit accepts: its descriptors, re-encoded
// without annotations, are at most about as long as the manifest. The
// event log's messages must take it: the embedded server is configured
// for it; an external NATS needs max_payload of at least 8 MiB + 64 KiB.
const MaxEncodedSize = 8 << 20

// MaxDeadLetterBody bounds the raw body a dead letter keeps.
const MaxDeadLetterBody = 1 << 20

// ErrUnsupportedVersion is returned by Decode for an envelope written by a
// newer refgc than this one. Upgrade the reader; never skip such events.
var ErrUnsupportedVersion = errors.New("events: unsupported envelope version")

// ErrTooLarge is returned by Decode for input over MaxEncodedSize.
var ErrTooLarge = errors.New("events: encoded event too large")

// Kind names what an event says happened.
type Kind string

// The event kinds. Each uses exactly one body field of Event, named in its comment.
const (
	// ManifestPushed: a manifest revision exists in a repository (Manifest).
	ManifestPushed Kind = "manifest.pushed"
	// TagSet: a tag points at a manifest (Tag, with Digest).
	TagSet Kind = "tag.set"
	// TagDeleted: a tag no longer exists (Tag, without Digest).
	TagDeleted Kind = "tag.deleted"
	// DigestDeleted: a digest was deleted in a repository; the projection
	// decides whether it was a manifest revision or a layer link (Ref).
	DigestDeleted Kind = "digest.deleted"
	// BlobPushed: blob data was uploaded and linked into a repository (Blob).
	BlobPushed Kind = "blob.pushed"
	// BlobMounted: existing blob data was linked into another repository (Blob, with From).
	BlobMounted Kind = "blob.mounted"
	// Touched: a blob or manifest was pulled or HEADed; extends its lease (Ref).
	Touched Kind = "touched"
	// RepositoryDeleted: a whole repository went away (Repo).
	RepositoryDeleted Kind = "repository.deleted"
	// LabelAttached and LabelDetached: a label on a manifest (Label).
	LabelAttached Kind = "label.attached"
	LabelDetached Kind = "label.detached"
	// LegacyImageCreated: a legacy (v1) image with its parent and blobs (Legacy).
	LegacyImageCreated Kind = "legacy.created"
	// LegacyDerived: derived storage (a squashed or converted form) was
	// made for an existing legacy image; it lives as long as the image
	// (Legacy, with ID and Derived only: no Parent, no Storage).
	LegacyDerived Kind = "legacy.derived"
	// BlobObserved: the reconciler found blob data in storage (Blob, Repo may be empty).
	BlobObserved Kind = "blob.observed"
	// ObservedAbsent: the reconciler did not find a node that the projection
	// holds; ignored for any node that has seen an event after AsOf (Absent).
	ObservedAbsent Kind = "observed.absent"
	// Collected: the collector removed a node from storage (Collected).
	// For a tag it is a step of the tag's lifetime: an expired tag is
	// removed into the time machine, and a tag in the time machine whose
	// window ended is forgotten, releasing its manifest.
	Collected Kind = "gc.collected"
	// Healed: the collector re-linked in storage a node that a late
	// statement proved live after it was unlinked (Collected, naming the
	// node; Purged is always false).
	Healed Kind = "gc.healed"
	// Refused: ingest could not accept a notification (dead-lettered, over
	// the size limit, or refused for its credentials), so the projection
	// may miss what it said (Refused). Collection pauses until a reconcile
	// that began after it has run.
	Refused Kind = "notification.refused"
	// Reconciled: a reconcile pass that began at AsOf has published all its
	// corrections (Reconciled). Repos names the repositories it walked;
	// empty means the whole registry.
	Reconciled Kind = "reconcile.completed"
	// BlobHeld: a repository partition's projection states whether it
	// holds a blob (Held): the statement a digest partition counts blob
	// references by (refcount's Partition; docs/PARTITIONING.md). Only
	// refgc publishes it.
	BlobHeld Kind = "blob.held"
)

// Kinds lists every kind, in a stable order.
var Kinds = []Kind{ManifestPushed, TagSet, TagDeleted, DigestDeleted, BlobPushed,
	BlobMounted, Touched, RepositoryDeleted, LabelAttached, LabelDetached,
	LegacyImageCreated, LegacyDerived, BlobObserved, ObservedAbsent, Collected, Healed, Refused, Reconciled, BlobHeld}

// Event is the versioned envelope. Exactly one body pointer is set, the one
// its Kind names.
type Event struct {
	V      int       `json:"v"`
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
	Source string    `json:"source,omitempty"`
	Kind   Kind      `json:"kind"`
	// Received is when refgc's ingest accepted the event from a registry's
	// notification queue; zero for events refgc makes itself. Events with
	// it set move their Source's delivery watermark (see refcount).
	Received time.Time `json:"received,omitzero"`
	// Host is the registry host that sent an ingested event (Distribution's
	// source.addr). A new Source on a known Host is a registry restart: its
	// in-memory notification queue, and whatever it held, is lost.
	Host string `json:"host,omitempty"`

	Manifest  *Manifest       `json:"manifest,omitempty"`
	Tag       *Tag            `json:"tag,omitempty"`
	Ref       *RepoDigest     `json:"ref,omitempty"`
	Blob      *Blob           `json:"blob,omitempty"`
	Repo      *Repo           `json:"repo,omitempty"`
	Label     *Label          `json:"label,omitempty"`
	Legacy    *LegacyImage    `json:"legacy,omitempty"`
	Absent    *Observation    `json:"absent,omitempty"`
	Collected *CollectedRef   `json:"collected,omitempty"`
	Refused   *RefusedRef     `json:"refused,omitempty"`
	Reconcile *Reconciliation `json:"reconcile,omitempty"`
	Held      *Holding        `json:"held,omitempty"`
}

// Descriptor names content by digest, with its media type and size.
type Descriptor struct {
	MediaType string        `json:"mediaType,omitempty"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// Manifest is the body of ManifestPushed: a revision and everything it references.
type Manifest struct {
	Repo      string        `json:"repo"`
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
	// Blobs are the config and layers, linked into the same repository.
	Blobs []Descriptor `json:"blobs,omitempty"`
	// Children are the manifests an index lists, revisions of the same repository.
	Children []Descriptor `json:"children,omitempty"`
	// Subject is the manifest this one refers to (OCI referrers): it lives
	// as long as its subject does.
	Subject *Descriptor `json:"subject,omitempty"`
	// Legacy is the legacy image this manifest stands for, if any.
	Legacy string `json:"legacy,omitempty"`
	// Tag, if set, is also pointed at this manifest (a push by tag).
	Tag string `json:"tag,omitempty"`
	// TagExpires, with Tag, is when that tag expires (Tag.Expires).
	TagExpires time.Time `json:"tagExpires,omitzero"`
	// Unverified says the manifest itself could not be read, so its subject
	// (which notifications never carry) is unknown: the projection keeps
	// the revision as a root until a complete statement of it arrives
	// (a re-push, or the reconciler's reading of storage).
	Unverified bool `json:"unverified,omitempty"`
}

// Tag is the body of TagSet and TagDeleted.
type Tag struct {
	Repo   string        `json:"repo"`
	Name   string        `json:"name"`
	Digest digest.Digest `json:"digest,omitempty"`
	// Expires, on TagSet, is when the tag stops existing (Quay's
	// lifetime_end): the collector then removes it, and it stays
	// recoverable for the repository's time-machine window. Zero: never.
	Expires time.Time `json:"expires,omitzero"`
}

// RepoDigest is a digest in a repository: the body of DigestDeleted and Touched.
type RepoDigest struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
}

// Blob is the body of BlobPushed, BlobMounted and BlobObserved.
type Blob struct {
	Repo   string        `json:"repo,omitempty"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	From   string        `json:"from,omitempty"`
}

// Repo is the body of RepositoryDeleted.
type Repo struct {
	Name string `json:"name"`
}

// Label is the body of LabelAttached and LabelDetached.
type Label struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	ID     string        `json:"id"`
}

// LegacyImage is the body of LegacyImageCreated and LegacyDerived.
type LegacyImage struct {
	Repo    string          `json:"repo"`
	ID      string          `json:"id"`
	Parent  string          `json:"parent,omitempty"`
	Storage digest.Digest   `json:"storage,omitempty"`
	Derived []digest.Digest `json:"derived,omitempty"`
}

// NodeKind is the kind of a node of the reference graph.
type NodeKind string

// The node kinds.
const (
	NodeTag      NodeKind = "tag"
	NodeManifest NodeKind = "manifest"
	NodeLayer    NodeKind = "layer" // a repository layer link
	NodeBlob     NodeKind = "blob"
	NodeLabel    NodeKind = "label"
	NodeLegacy   NodeKind = "legacy"
	// NodePartition names a repository partition (Name "r<i>") as the
	// holder of a blob in a digest partition (refcount's Partition). It is
	// no node of the registry: no event names one.
	NodePartition NodeKind = "partition"
)

// NodeRef names one node of the graph. Which fields are set depends on Kind:
// tag (Repo, Name), manifest and layer (Repo, Digest), blob (Digest),
// label (Repo, Name), legacy (Repo, Name).
type NodeRef struct {
	Kind   NodeKind      `json:"kind"`
	Repo   string        `json:"repo,omitempty"`
	Name   string        `json:"name,omitempty"`
	Digest digest.Digest `json:"digest,omitempty"`
}

func (n NodeRef) String() string {
	switch n.Kind {
	case NodeBlob:
		return "blob " + n.Digest.String()
	case NodeTag:
		return "tag " + n.Repo + ":" + n.Name
	case NodeLabel, NodeLegacy:
		return string(n.Kind) + " " + n.Repo + "/" + n.Name
	case NodePartition:
		return "partition " + n.Name
	default:
		return string(n.Kind) + " " + n.Repo + "@" + n.Digest.String()
	}
}

// ParseRef reads a node reference as operators write it: "repo:tag",
// "repo@digest" (a manifest revision), "layer:repo@digest" or
// "blob:digest". The reference is validated (NodeRef.Validate).
func ParseRef(s string) (NodeRef, error) {
	var ref NodeRef
	switch {
	case strings.HasPrefix(s, "blob:"):
		ref = NodeRef{Kind: NodeBlob, Digest: digest.Digest(strings.TrimPrefix(s, "blob:"))}
	case strings.HasPrefix(s, "layer:"):
		repo, d, _ := strings.Cut(strings.TrimPrefix(s, "layer:"), "@")
		ref = NodeRef{Kind: NodeLayer, Repo: repo, Digest: digest.Digest(d)}
	case strings.Contains(s, "@"):
		repo, d, _ := strings.Cut(s, "@")
		ref = NodeRef{Kind: NodeManifest, Repo: repo, Digest: digest.Digest(d)}
	default:
		i := strings.LastIndex(s, ":")
		if i < 0 {
			return ref, fmt.Errorf("events: reference %q: want repo:tag, repo@digest, layer:repo@digest or blob:digest", s)
		}
		ref = NodeRef{Kind: NodeTag, Repo: s[:i], Name: s[i+1:]}
	}
	if err := ref.Validate(); err != nil {
		return ref, fmt.Errorf("events: reference %q: %w", s, err)
	}
	return ref, nil
}

// Observation is the body of ObservedAbsent.
type Observation struct {
	Node NodeRef `json:"node"`
	// AsOf is the stream sequence at which the observing walk began.
	AsOf uint64 `json:"asOf"`
}

// CollectedRef is the body of Collected.
type CollectedRef struct {
	Node NodeRef `json:"node"`
	// Purged is true when the data itself went (blobs), false for an unlink.
	Purged bool `json:"purged,omitempty"`
	// Intent is the collector's intent id that this event completes.
	Intent string `json:"intent,omitempty"`
	// AsOf is the projection's cursor when the collector re-checked the
	// node. Any event for the node after it means the removal raced with a
	// new reference: the node stays, and the collector restores its links.
	AsOf uint64 `json:"asOf"`
}

// RefusedUnauthorized is the Refused reason of a request that failed
// authentication. Its body is never read, so it proves nothing about the
// view: it is recorded and counted, and pauses nothing.
const RefusedUnauthorized = "unauthorized"

// RefusedSourceSilent is the Refused reason the collector publishes for a
// registry instance (the event's Source) that delivered nothing for the
// trash retention: it may have restarted and lost its queue without a word
// from its successor. The instance is marked gone and collection pauses
// until a reconcile.
const RefusedSourceSilent = "source_silent"

// RefusedRef is the body of Refused.
type RefusedRef struct {
	// Reason is a small fixed code (a dead-letter reason, "too_large",
	// "unauthorized").
	Reason string `json:"reason"`
	// Repo is the repository the notification named, when it could be read.
	Repo string `json:"repo,omitempty"`
}

// Reconciliation is the body of Reconciled.
type Reconciliation struct {
	// AsOf is the stream sequence at which the walk began: everything the
	// projection applied up to it was compared with storage.
	AsOf uint64 `json:"asOf"`
	// Repos are the repositories walked; empty for the whole registry.
	Repos []string `json:"repos,omitempty"`
	// Partition is the partition whose share was walked ("r0", "d1"),
	// and Layout its "<repos>/<digests>"; both empty without partitioning.
	Partition string `json:"partition,omitempty"`
	Layout    string `json:"layout,omitempty"`
}

// Holding is the body of BlobHeld: whether repository partition
// Partition holds blob Digest as of its cursor Version. A digest partition
// applies, per blob and partition, only a statement newer than the last
// one it applied, so statements may arrive late, twice or out of order.
type Holding struct {
	Partition int `json:"partition"`
	// Layout is the stating partition's "<repos>/<digests>": a digest
	// partition of another layout ignores the statement.
	Layout string        `json:"layout"`
	Digest digest.Digest `json:"digest"`
	Held   bool          `json:"held"`
	// Lease is the newest lease the partition gave the blob (a push, a
	// mount or a pull through it), kept by the digest partition when the
	// blob is no longer held.
	Lease   time.Time `json:"lease,omitzero"`
	Size    int64     `json:"size"`
	Version uint64    `json:"version"`
}

// Repository returns the repository an event is about, or "" if it names none.
func (e Event) Repository() string {
	switch {
	case e.Manifest != nil:
		return e.Manifest.Repo
	case e.Tag != nil:
		return e.Tag.Repo
	case e.Ref != nil:
		return e.Ref.Repo
	case e.Blob != nil:
		return e.Blob.Repo
	case e.Repo != nil:
		return e.Repo.Name
	case e.Label != nil:
		return e.Label.Repo
	case e.Legacy != nil:
		return e.Legacy.Repo
	case e.Absent != nil:
		return e.Absent.Node.Repo
	case e.Collected != nil:
		return e.Collected.Node.Repo
	case e.Refused != nil:
		return e.Refused.Repo
	}
	return ""
}

// Encode returns the event's JSON encoding, with V set to Version if it was zero.
func Encode(e Event) ([]byte, error) {
	if e.V == 0 {
		e.V = Version
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("events: encode %s: %w", e.ID, err)
	}
	return b, nil
}

// Decode parses and validates one encoded event. Unknown fields are
// ignored; a newer version gives ErrUnsupportedVersion; an invalid event
// gives a *ValidationError.
func Decode(b []byte) (Event, error) {
	var e Event
	if len(b) > MaxEncodedSize {
		return e, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("events: decode: %w", err)
	}
	if e.V > Version {
		return e, fmt.Errorf("%w: %d (this reader knows up to %d)", ErrUnsupportedVersion, e.V, Version)
	}
	if err := e.Validate(); err != nil {
		return e, err
	}
	return e, nil
}

// Record is one entry of the event log as the projection sees it: the
// stream sequence and the decoded event. Err is set, and Event is zero,
// when the entry could not be decoded or validated; such a record still
// advances the projection's cursor and is reported, never applied. A
// Follower never hands one over (it stops at it, with ErrUndecodable); a
// replay that rebuilds a projection does, to pass over it.
type Record struct {
	Seq   uint64
	Event Event
	Err   error
	// Valid says Event already passed Validate (Decode validates), so the
	// projection need not check it again.
	Valid bool
}

// ErrStreamChanged is returned (wrapped) when a projection meets another
// stream than the one its cursor counts in: the stream was deleted and
// created again under its name (its sequences restarted at 1), or the
// projection was built from another log. The projection returns it, and the
// event log's follower stops with it (and ErrCursorGap); rebuild the
// projection.
var ErrStreamChanged = errors.New("events: not the stream the projection follows")
