package events

import (
	// go-digest hashes and checks digests through crypto's registry:
	// link the algorithms a digest may name (sha256, sha384, sha512), which
	// the event log's NATS dependency used to link for us.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

// ValidationError says which field of an event is wrong and why.
type ValidationError struct {
	ID     string // the event id, if it had one
	Field  string // a dotted path, such as "manifest.blobs[2].digest"
	Reason string
}

func (e *ValidationError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("events: invalid event %q: %s: %s", e.ID, e.Field, e.Reason)
	}
	return fmt.Sprintf("events: invalid event: %s: %s", e.Field, e.Reason)
}

// ErrInvalid matches every *ValidationError with errors.Is.
var ErrInvalid = errors.New("events: invalid event")

// Is lets errors.Is(err, ErrInvalid) match a *ValidationError.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// The distribution reference grammar (github.com/distribution/reference):
// path components of lower-case alphanumerics joined by ".", "_", "__" or
// runs of "-", separated by "/".
var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// Labels and legacy image ids are opaque, but end up in keys: keep them tame.
	idRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:=-]{0,254}$`)
	// reasonRE is a refusal code: usable as a metric label.
	reasonRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	layoutRE = regexp.MustCompile(`^[1-9][0-9]{0,5}/[1-9][0-9]{0,2}$`)
)

// The matchers below are the regular expressions above written out by
// hand: events are validated once each on the ingest path, where the
// regexp engine cost more than applying them. The regular expressions
// stay as their definition; TestMatchersAgreeWithRegexps holds the two
// equal.

func alnumLower(b byte) bool { return 'a' <= b && b <= 'z' || '0' <= b && b <= '9' }

func alnumAny(b byte) bool { return alnumLower(b) || 'A' <= b && b <= 'Z' }

// matchRepo is repoRE: components of [a-z0-9]+ joined by ".", "_", "__"
// or runs of "-", separated by "/"; that is, runs of [a-z0-9]+ each
// separated from the next by one of those or "/".
func matchRepo(s string) bool {
	i := 0
	for {
		start := i
		for i < len(s) && alnumLower(s[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == len(s) {
			return true
		}
		switch s[i] {
		case '.', '/':
			i++
		case '_':
			i++
			if i < len(s) && s[i] == '_' {
				i++
			}
		case '-':
			for i < len(s) && s[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// matchTag is tagRE.
func matchTag(s string) bool { return matchName(s, 128, "_.-") }

// matchID is idRE.
func matchID(s string) bool { return matchName(s, 255, "_.:=-") }

// matchName: a first character in [A-Za-z0-9_], then up to max-1 in
// [A-Za-z0-9] or extra.
func matchName(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max || !(alnumAny(s[0]) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !alnumAny(s[i]) && strings.IndexByte(extra, s[i]) < 0 {
			return false
		}
	}
	return true
}

// canonicalDigest reports whether s is a sha256, sha384 or sha512 digest
// in go-digest's canonical form (lower-case hex of the algorithm's
// length): what digest.Parse accepts for those algorithms. Anything else
// goes through go-digest itself.
func canonicalDigest(s string) bool {
	var n int
	switch {
	case strings.HasPrefix(s, "sha256:"):
		n = 64
	case strings.HasPrefix(s, "sha384:"):
		n = 96
	case strings.HasPrefix(s, "sha512:"):
		n = 128
	default:
		return false
	}
	if len(s) != 7+n {
		return false
	}
	for i := 7; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// MaxRepoLength is the longest repository name the grammar allows.
const MaxRepoLength = 255

// ValidateRepo checks a repository name against the reference grammar.
func ValidateRepo(name string) error {
	switch {
	case name == "":
		return errors.New("empty repository name")
	case len(name) > MaxRepoLength:
		return fmt.Errorf("repository name longer than %d characters", MaxRepoLength)
	case !matchRepo(name):
		return fmt.Errorf("repository name %q does not match the reference grammar", clip(name))
	}
	return nil
}

// ValidateTag checks a tag name against the reference grammar.
func ValidateTag(name string) error {
	if !matchTag(name) {
		return fmt.Errorf("tag %q does not match the reference grammar", clip(name))
	}
	return nil
}

// ValidateDigest parses a digest with go-digest and checks that its algorithm
// is one this build can verify.
func ValidateDigest(d digest.Digest) error {
	if d == "" {
		return errors.New("empty digest")
	}
	if canonicalDigest(string(d)) {
		return nil
	}
	p, err := digest.Parse(string(d))
	if err != nil {
		return fmt.Errorf("digest %q: %w", clip(string(d)), err)
	}
	if !p.Algorithm().Available() {
		return fmt.Errorf("digest %q: algorithm not available", clip(string(d)))
	}
	return nil
}

// ValidHost reports whether s may be an event's Host: at most 255
// characters, none of them NUL, CR or LF. The empty string is valid.
func ValidHost(s string) bool {
	return len(s) <= 255 && !strings.ContainsAny(s, "\x00\n\r")
}

// ValidEventID reports whether s may be an event's ID (see Validate).
func ValidEventID(s string) bool {
	return s != "" && len(s) <= 255 && !strings.ContainsAny(s, "\x00\n\r ")
}

func validateID(s string) error {
	if !matchID(s) {
		return fmt.Errorf("identifier %q has characters outside [A-Za-z0-9_.:=-] or is too long", clip(s))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// checker accumulates the first error with its field path.
type checker struct {
	id  string
	err *ValidationError
}

func (c *checker) fail(field, reason string) {
	if c.err == nil {
		c.err = &ValidationError{ID: c.id, Field: field, Reason: reason}
	}
}

func (c *checker) check(field string, err error) {
	if err != nil {
		c.fail(field, err.Error())
	}
}

func (c *checker) repo(field, v string)                 { c.check(field, ValidateRepo(v)) }
func (c *checker) tag(field, v string)                  { c.check(field, ValidateTag(v)) }
func (c *checker) digest(field string, v digest.Digest) { c.check(field, ValidateDigest(v)) }
func (c *checker) size(field string, v int64) {
	if v < 0 {
		c.fail(field, fmt.Sprintf("negative size %d", v))
	}
}
func (c *checker) mediaType(field, v string) {
	if v == "" {
		c.fail(field, "media type is required")
	} else if len(v) > 255 || strings.ContainsAny(v, "\x00\n\r") {
		c.fail(field, "media type is malformed")
	}
}

func (c *checker) descriptor(field string, d Descriptor) {
	c.digest(field+".digest", d.Digest)
	c.size(field+".size", d.Size)
}

// descriptors checks a list of descriptors, naming a bad one by its index
// (the field names are only formatted for a bad one).
func (c *checker) descriptors(field string, ds []Descriptor) {
	for i, d := range ds {
		if ValidateDigest(d.Digest) != nil || d.Size < 0 {
			c.descriptor(fmt.Sprintf("%s[%d]", field, i), d)
		}
	}
}

func (c *checker) node(field string, n NodeRef) {
	switch n.Kind {
	case NodeTag:
		c.repo(field+".repo", n.Repo)
		c.tag(field+".name", n.Name)
	case NodeManifest, NodeLayer:
		c.repo(field+".repo", n.Repo)
		c.digest(field+".digest", n.Digest)
	case NodeBlob:
		c.digest(field+".digest", n.Digest)
	case NodeLabel, NodeLegacy:
		c.repo(field+".repo", n.Repo)
		c.check(field+".name", validateID(n.Name))
	default:
		c.fail(field+".kind", fmt.Sprintf("unknown node kind %q", clip(string(n.Kind))))
	}
}

// Validate checks a node reference as Event.Validate checks one in an
// event's body: it returns a *ValidationError naming the first bad field
// ("node.repo", "node.digest", …), or nil.
func (n NodeRef) Validate() error {
	c := &checker{}
	c.node("node", n)
	if c.err != nil {
		return c.err
	}
	return nil
}

// Validate checks the envelope and the body its kind needs. It returns a
// *ValidationError naming the first bad field, or nil.
func (e *Event) Validate() error {
	c := &checker{id: clip(e.ID)}
	if e.ID == "" {
		c.fail("id", "required")
	} else if !ValidEventID(e.ID) {
		c.fail("id", "must be at most 255 characters with no spaces or control characters")
	}
	if e.Time.IsZero() {
		c.fail("time", "required")
	}
	if !ValidHost(e.Host) {
		c.fail("host", "must be at most 255 characters with no control characters")
	}
	if e.V < 0 || e.V > Version {
		c.fail("v", fmt.Sprintf("unsupported version %d", e.V))
	}
	bodies := 0
	for _, set := range []bool{e.Manifest != nil, e.Tag != nil, e.Ref != nil, e.Blob != nil,
		e.Repo != nil, e.Label != nil, e.Legacy != nil, e.Absent != nil, e.Collected != nil,
		e.Refused != nil, e.Reconcile != nil} {
		if set {
			bodies++
		}
	}
	if bodies > 1 {
		c.fail("kind", "more than one body is set")
	}
	need := func(field string, set bool) bool {
		if !set {
			c.fail(field, fmt.Sprintf("required for kind %s", e.Kind))
		}
		return set
	}
	switch e.Kind {
	case ManifestPushed:
		if need("manifest", e.Manifest != nil) {
			m := e.Manifest
			c.repo("manifest.repo", m.Repo)
			c.digest("manifest.digest", m.Digest)
			c.mediaType("manifest.mediaType", m.MediaType)
			c.size("manifest.size", m.Size)
			c.descriptors("manifest.blobs", m.Blobs)
			c.descriptors("manifest.children", m.Children)
			if m.Subject != nil {
				c.descriptor("manifest.subject", *m.Subject)
			}
			if m.Legacy != "" {
				c.check("manifest.legacy", validateID(m.Legacy))
			}
			if m.Tag != "" {
				c.tag("manifest.tag", m.Tag)
			} else if !m.TagExpires.IsZero() {
				c.fail("manifest.tagExpires", "set without manifest.tag")
			}
		}
	case TagSet, TagDeleted:
		if need("tag", e.Tag != nil) {
			c.repo("tag.repo", e.Tag.Repo)
			c.tag("tag.name", e.Tag.Name)
			if e.Kind == TagSet {
				c.digest("tag.digest", e.Tag.Digest)
			} else if !e.Tag.Expires.IsZero() {
				c.fail("tag.expires", "only a tag.set carries an expiry")
			}
		}
	case DigestDeleted, Touched:
		if need("ref", e.Ref != nil) {
			c.repo("ref.repo", e.Ref.Repo)
			c.digest("ref.digest", e.Ref.Digest)
		}
	case BlobPushed, BlobMounted, BlobObserved:
		if need("blob", e.Blob != nil) {
			if e.Kind != BlobObserved || e.Blob.Repo != "" {
				c.repo("blob.repo", e.Blob.Repo)
			}
			c.digest("blob.digest", e.Blob.Digest)
			c.size("blob.size", e.Blob.Size)
			if e.Blob.From != "" {
				c.repo("blob.from", e.Blob.From)
			}
		}
	case RepositoryDeleted:
		if need("repo", e.Repo != nil) {
			c.repo("repo.name", e.Repo.Name)
		}
	case LabelAttached, LabelDetached:
		if need("label", e.Label != nil) {
			c.repo("label.repo", e.Label.Repo)
			c.digest("label.digest", e.Label.Digest)
			c.check("label.id", validateID(e.Label.ID))
		}
	case LegacyImageCreated, LegacyDerived:
		if need("legacy", e.Legacy != nil) {
			l := e.Legacy
			c.repo("legacy.repo", l.Repo)
			c.check("legacy.id", validateID(l.ID))
			switch {
			case e.Kind == LegacyImageCreated:
				if l.Parent != "" {
					c.check("legacy.parent", validateID(l.Parent))
				}
				c.digest("legacy.storage", l.Storage)
			case l.Parent != "":
				c.fail("legacy.parent", "not allowed for kind legacy.derived")
			case l.Storage != "":
				c.fail("legacy.storage", "not allowed for kind legacy.derived")
			case len(l.Derived) == 0:
				c.fail("legacy.derived", "required for kind legacy.derived")
			}
			for i, d := range l.Derived {
				c.digest(fmt.Sprintf("legacy.derived[%d]", i), d)
			}
		}
	case ObservedAbsent:
		if need("absent", e.Absent != nil) {
			c.node("absent.node", e.Absent.Node)
		}
	case Collected, Healed:
		if need("collected", e.Collected != nil) {
			c.node("collected.node", e.Collected.Node)
		}
	case Refused:
		if need("refused", e.Refused != nil) {
			if !reasonRE.MatchString(e.Refused.Reason) {
				c.fail("refused.reason", "must be a short lower-case code")
			}
			if e.Refused.Repo != "" {
				c.repo("refused.repo", e.Refused.Repo)
			}
		}
	case Reconciled:
		if need("reconcile", e.Reconcile != nil) {
			for i, r := range e.Reconcile.Repos {
				c.repo(fmt.Sprintf("reconcile.repos[%d]", i), r)
			}
			if p := e.Reconcile.Partition; p != "" && !reasonRE.MatchString(p) {
				c.fail("reconcile.partition", "must be a short lower-case code")
			}
			if l := e.Reconcile.Layout; l != "" && !layoutRE.MatchString(l) {
				c.fail("reconcile.layout", "must be <repos>/<digests>")
			}
		}
	case BlobHeld:
		if need("held", e.Held != nil) {
			c.digest("held.digest", e.Held.Digest)
			c.size("held.size", e.Held.Size)
			if e.Held.Partition < 0 {
				c.fail("held.partition", "must not be negative")
			}
			if !layoutRE.MatchString(e.Held.Layout) {
				c.fail("held.layout", "must be <repos>/<digests>")
			}
		}
	case "":
		c.fail("kind", "required")
	default:
		c.fail("kind", fmt.Sprintf("unknown kind %q", clip(string(e.Kind))))
	}
	if c.err != nil {
		return c.err
	}
	return nil
}
