package refcount

// What the projection knows about delivery: how far each registry instance's
// notification queue has delivered (sources/, hosts/), when the view may be
// incomplete (pauses/), which unlinked nodes a late event proved live
// (tombs/, heals/), and the registry time of each tag's last change
// (stamps/). The collector reads it to judge eligibility on event time
// against the watermark, to pause, and to heal; Apply writes it, from the
// events alone, so a replay rebuilds it.

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// SourceState is the delivery watermark of one registry instance: the
// newest registry time among the events applied from it, and when refgc
// received the newest of them. A registry's queue is sequential, so every
// event it made before Watermark has been applied.
type SourceState struct {
	Source    string    `json:"source"`
	Host      string    `json:"host,omitempty"`
	Watermark time.Time `json:"watermark"`
	Received  time.Time `json:"received"`
	// Gone is set when another instance took over its host (a restart):
	// its queue is lost, and its watermark bounds nothing until it
	// delivers again.
	Gone bool `json:"gone,omitempty"`
}

// Pause says that the projection may miss events, from LastSeq on, in Repo
// ("" for the whole registry): collection there waits for a reconcile that
// begins at or after LastSeq.
type Pause struct {
	Repo    string `json:"repo,omitempty"`
	Reason  string `json:"reason"`
	LastSeq uint64 `json:"lastSeq"`
	// Count is how many events asked for this pause since the last reconcile.
	Count int `json:"count"`
	// Covered are, in a digest partition, the repository partitions that
	// reconciled their whole share since a registry-wide pause.
	Covered []int `json:"covered,omitempty"`
}

// Pause reasons (Pause.Reason): a Refused event's own reason prefixed with
// "refused_", PauseRestart or PauseNewInstance.
const (
	// PauseRestart: a known registry host runs a new instance.
	PauseRestart = "registry_restart"
	// PauseNewInstance: a registry instance refgc had not heard from
	// appeared beside others (a new replica, or one restarted on a new host).
	PauseNewInstance = "new_registry_instance"
)

// Heal is an unlinked node that a later event stated present or
// referenced: the collector re-links it in storage and publishes Healed.
type Heal struct {
	Node events.NodeRef `json:"node"`
	// UnlinkedAt is when the collector unlinked it; ProvedAt is the time of
	// the event that proved it live (often before UnlinkedAt: a late one).
	UnlinkedAt time.Time `json:"unlinkedAt"`
	ProvedAt   time.Time `json:"provedAt"`
	// Received is when refgc received the event that proved it live
	// (zero for an event refgc made itself).
	Received time.Time `json:"received,omitzero"`
	Seq      uint64    `json:"seq"`
}

// sourceExpiry is how long a registry instance may send nothing before its
// record goes, when a new instance appears: registries that run in
// containers get a new instance id (and often a new host) at every start.
const sourceExpiry = 7 * 24 * time.Hour

// delivered moves the watermark of an ingested event's source and notices
// a new instance: a registry restarted (a new instance on a known host), or
// one refgc had not heard from appeared beside others. Either may have
// lost a queue, or delivered elsewhere before: the view may miss events.
// Only an instance's first event is judged so: two instances that share
// an address (a misconfiguration) alternate without pausing anything.
func (t *txn) delivered(e *events.Event) {
	src, fresh := t.source(e.Source)
	if src == nil {
		return
	}
	if e.Time.After(src.Watermark) {
		src.Watermark = e.Time.UTC()
	}
	if e.Received.After(src.Received) {
		src.Received = e.Received.UTC()
	}
	src.Gone = false
	others := 0
	if fresh {
		others = t.expireSources(e.Source, e.Received.Add(-sourceExpiry))
	}
	prev := ""
	if e.Host != "" && src.Host != e.Host {
		src.Host = e.Host
		hosts := t.tx.Bucket(bucketHosts)
		prev = string(hosts.Get([]byte(e.Host)))
		t.put(hosts, []byte(e.Host), []byte(e.Source))
	}
	switch {
	case fresh && prev != "" && prev != e.Source:
		// The host runs a new instance: the old one's queue, and whatever
		// it still held, is gone. Its watermark no longer means anything.
		if old, _ := t.source(prev); old != nil {
			old.Gone = true
		}
		t.pause("", PauseRestart)
	case fresh && others > 0:
		t.pause("", PauseNewInstance)
	}
}

// expireSources drops the sources other than name that received nothing
// since before, and returns how many others remain.
func (t *txn) expireSources(name string, before time.Time) int {
	b := t.tx.Bucket(bucketSources)
	var drop []string
	others := map[string]bool{}
	for k := range t.sources {
		if k != name {
			others[k] = true
		}
	}
	err := b.ForEach(func(k, v []byte) error {
		if string(k) == name {
			return nil
		}
		var s SourceState
		if err := json.Unmarshal(v, &s); err == nil && s.Received.Before(before) && t.sources[string(k)] == nil {
			drop = append(drop, string(k))
			return nil
		}
		others[string(k)] = true
		return nil
	})
	if err != nil {
		t.fail(err)
		return 0
	}
	for _, k := range drop {
		t.del(b, []byte(k))
	}
	return len(others)
}

// source returns the cached state of a source, loading it on first use;
// fresh says that no event from it was applied before.
func (t *txn) source(name string) (s *SourceState, fresh bool) {
	if s, ok := t.sources[name]; ok {
		return s, false
	}
	s = &SourceState{Source: name}
	raw := t.tx.Bucket(bucketSources).Get([]byte(name))
	if raw != nil {
		if err := json.Unmarshal(raw, s); err != nil {
			t.fail(fmt.Errorf("%w: source %q: %w", ErrCorrupt, name, err))
			return nil, false
		}
	}
	t.sources[name] = s
	return s, raw == nil
}

// silenced marks a known source gone: it was silent for too long.
func (t *txn) silenced(name string) {
	if _, cached := t.sources[name]; !cached && t.tx.Bucket(bucketSources).Get([]byte(name)) == nil {
		return
	}
	if s, _ := t.source(name); s != nil {
		s.Gone = true
	}
}

func (t *txn) flushSources() {
	b := t.tx.Bucket(bucketSources)
	for name, s := range t.sources {
		t.putJSON(b, []byte(name), s)
	}
	clear(t.sources)
}

// pauseKey is the pauses/ key of repo: a lone 0x00 (never part of a
// repository name) for the whole registry.
func pauseKey(repo string) []byte {
	if repo == "" {
		return []byte{0}
	}
	return []byte(repo)
}

// pause records that the view of repo ("" for all) may be incomplete.
func (t *txn) pause(repo, reason string) {
	b := t.tx.Bucket(bucketPauses)
	p := Pause{Repo: repo, Reason: reason}
	if raw := b.Get(pauseKey(repo)); raw != nil {
		if err := json.Unmarshal(raw, &p); err != nil {
			t.fail(fmt.Errorf("%w: pause %q: %w", ErrCorrupt, repo, err))
			return
		}
		p.Reason = reason
	}
	p.LastSeq = t.seq
	p.Count++
	p.Covered = nil
	t.putJSON(b, pauseKey(repo), p)
}

// reconciled lifts the pauses that a reconcile beginning at r.AsOf covers.
func (t *txn) reconciled(r *events.Reconciliation) {
	t.forPauses(func(_ []byte, p *Pause) (drop, put bool) {
		return p.LastSeq <= r.AsOf && (len(r.Repos) == 0 || p.Repo != "" && slices.Contains(r.Repos, p.Repo)), false
	})
	if len(r.Repos) == 0 {
		t.put(t.tx.Bucket(bucketMeta), keyReconciled, u64(r.AsOf))
		t.pruneStamps(t.now - int64(t.p.opts.Retention))
	}
}

// forPauses calls fn for every pause, then drops those it said to drop and
// writes back those it changed.
func (t *txn) forPauses(fn func(k []byte, p *Pause) (drop, put bool)) {
	b := t.tx.Bucket(bucketPauses)
	var drop, put [][]byte
	var puts []Pause
	err := b.ForEach(func(k, v []byte) error {
		var p Pause
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("%w: pause %q: %w", ErrCorrupt, k, err)
		}
		switch d, w := fn(k, &p); {
		case d:
			drop = append(drop, append([]byte(nil), k...))
		case w:
			put, puts = append(put, append([]byte(nil), k...)), append(puts, p)
		}
		return nil
	})
	if err != nil {
		t.fail(err)
		return
	}
	for _, k := range drop {
		t.del(b, k)
	}
	for i, k := range put {
		t.putJSON(b, k, puts[i])
	}
}

// pruneStamps forgets the registry time of deleted tags changed before
// the given time (unix ns): only a notification later than the trash
// retention could still be ordered by it, and what such a late tag event
// would bring back into the projection, the next reconcile takes out.
func (t *txn) pruneStamps(before int64) {
	b := t.tx.Bucket(bucketStamps)
	var drop [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if int64(readU64(v)) < before && !t.exists(k) {
			drop = append(drop, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		t.fail(err)
		return
	}
	for _, k := range drop {
		t.del(b, k)
	}
}

// tagNewer reports whether an event at the current time may change the tag
// k (last writer wins by registry time), and records its time if so.
func (t *txn) tagNewer(k []byte) bool {
	b := t.tx.Bucket(bucketStamps)
	if prev := int64(readU64(b.Get(k))); prev > t.now {
		return false
	}
	t.put(b, k, u64(uint64(t.now)))
	return true
}

// revive is called for a node that an event states present or referenced.
// If the collector had unlinked it, the tombstone goes, a heal is recorded,
// and a manifest that no event re-pushed comes back from its trash entry.
func (t *txn) revive(k []byte) {
	var unlinked time.Time
	switch k[0] {
	case kManifest:
		trash := t.tx.Bucket(bucketTrash)
		raw := trash.Get(k)
		if raw == nil {
			return
		}
		var e TrashEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			t.fail(fmt.Errorf("%w: trash: %w", ErrCorrupt, err))
			return
		}
		t.del(trash, k)
		t.delta.trash--
		unlinked = e.UnlinkedAt
		if n := t.get(k); !n.present() {
			if e.Manifest.Digest != "" {
				body := e.Manifest
				body.Tag = ""
				t.manifestPushed(&body)
			} else {
				t.lease(k, n)
				t.setPresent(k, n, true)
			}
		}
	case kLayer, kTag:
		tombs := t.tx.Bucket(bucketTombs)
		v := tombs.Get(k)
		if v == nil {
			return
		}
		unlinked = time.Unix(0, int64(readU64(v))).UTC()
		t.del(tombs, k)
	default:
		return
	}
	ref, err := parseNodeKey(k)
	if err != nil {
		t.fail(err)
		return
	}
	t.putJSON(t.tx.Bucket(bucketHeals), k, Heal{Node: ref, UnlinkedAt: unlinked,
		ProvedAt: time.Unix(0, t.now).UTC(), Received: t.received, Seq: t.seq})
}

// bury drops a node's tombstone and pending heal: an explicit delete wins
// over an earlier statement that arrives late.
func (t *txn) bury(k []byte) {
	if t.tx.Bucket(bucketTrash).Get(k) != nil {
		t.delta.trash--
		t.del(t.tx.Bucket(bucketTrash), k)
	}
	t.del(t.tx.Bucket(bucketTombs), k)
	t.del(t.tx.Bucket(bucketHeals), k)
}

// healed drops the heal the collector has carried out; the link it wrote
// is as new as the event, so the storage check does not take it for a
// write the projection never heard of.
func (t *txn) healed(c *events.CollectedRef) {
	k := nodeKey(c.Node)
	t.del(t.tx.Bucket(bucketHeals), k)
	if !t.exists(k) {
		return
	}
	if n := t.get(k); n.present() && n.heard < t.now {
		n.heard = t.now
		t.touch(k, n)
	}
}

// Sources returns the delivery state of every registry instance, by name.
func (p *Projection) Sources() ([]SourceState, error) {
	return listJSON[SourceState](p, bucketSources, "source")
}

// Pauses returns the pauses no reconcile has lifted yet, by repository.
func (p *Projection) Pauses() ([]Pause, error) { return listJSON[Pause](p, bucketPauses, "pause") }

// Heals returns the heals the collector has still to carry out.
func (p *Projection) Heals() ([]Heal, error) { return listJSON[Heal](p, bucketHeals, "heal") }

// LastReconcile returns the AsOf of the last reconcile of the whole
// registry (0: none yet).
func (p *Projection) LastReconcile() (uint64, error) {
	var asOf uint64
	err := p.db.View(func(tx *bolt.Tx) error {
		asOf = readU64(tx.Bucket(bucketMeta).Get(keyReconciled))
		return nil
	})
	return asOf, err
}

// Tombstoned reports whether the collector unlinked the node and its
// tombstone is still there (a late event can heal it).
func (p *Projection) Tombstoned(ref events.NodeRef) (bool, error) {
	k := nodeKey(ref)
	var ok bool
	err := p.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketTrash).Get(k) != nil || tx.Bucket(bucketTombs).Get(k) != nil
		return nil
	})
	return ok, err
}

// listJSON returns the JSON records of a bucket, in key order.
func listJSON[T any](p *Projection, bucket []byte, what string) ([]T, error) {
	var out []T
	err := p.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrCorrupt, what, err)
			}
			out = append(out, x)
			return nil
		})
	})
	return out, err
}
