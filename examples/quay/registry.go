// Package quay is a reference publisher for registry developers: a small
// registry that keeps Quay's tables (tags with a lifetime, manifests and
// their blobs and labels, legacy images with their parents, storage and
// derived storage) in SQLite, publishes refgc's native events to
// JetStream on every write, and serves the deletion service through which
// refgc's collector asks it to delete what nothing references any more
// (tags whose time machine window ended among it), and the restore service
// through which `refgc restore REPO:TAG` brings a tag back.
//
// Read it in this order: schema.go (the tables), registry.go (the writes:
// each one changes the tables and writes the events that state the change
// into an outbox in the same transaction, then publishes the outbox),
// statements.go (how a row becomes an event), owner.go (the deletion
// service: Quay's gc.py rules, checked and applied in one transaction).
// docs/OWNERS.md describes the contract.
//
// Invariants:
//   - Every committed change has its events in the outbox in the same
//     transaction; the outbox is published in order, each event with a
//     stable id, so a crash between commit and publish loses nothing and
//     publishing twice stores each event once.
//   - Event times never go backwards and never repeat: refgc orders tag and
//     label changes by them.
//   - The owner deletes a row only when the rules of gc.py call it garbage
//     in the same transaction; otherwise it answers in_use with the
//     statements of what holds it (or refused, for what a tag still in
//     its time machine window holds).
//   - A tag's lifetime ends (lifetime_end) when it is deleted, expires or
//     its repository is purged; the row stays for the repository's time
//     machine window (Config.TimeMachine, the same as refgc's), holding
//     its manifest and restorable, and is deleted only when refgc asks.
package quay

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	_ "modernc.org/sqlite" // the pure-Go SQLite driver

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
)

// DefaultSource is the event source this registry publishes as.
const DefaultSource = "quay"

// Publisher stores events in the event log; *eventlog.Publisher is one.
type Publisher interface {
	PublishBatch(ctx context.Context, evs []events.Event) ([]eventlog.PubResult, error)
}

// Config configures a Registry.
type Config struct {
	// Path of the SQLite file.
	Path string
	// Publisher receives the events.
	Publisher Publisher
	// Source names the registry in its events (DefaultSource).
	Source string
	// Now is the clock (time.Now).
	Now func() time.Time
	// TimeMachine is how long a tag that was deleted, expired or purged in
	// a repository stays recoverable, holding its manifest (Quay's
	// removed_tag_expiration_s); nil is zero everywhere: ended tags go at
	// once. Give refgc the same windows (--time-machine and
	// collector.timeMachineRepos).
	TimeMachine func(repo string) time.Duration
}

// ErrNotFound is returned for a write that names a row that does not exist.
var ErrNotFound = errors.New("quay: not found")

// Registry is the reference publisher. It is safe for concurrent use;
// writes are serialised.
type Registry struct {
	db     *sql.DB
	pub    Publisher
	source string
	now    func() time.Time
	window func(repo string) time.Duration
	prefix string // of event ids: unique to the database

	mu   sync.Mutex // one writer; guards last
	last time.Time  // the last event time given
}

// Open opens (creating if needed) the registry's database.
func Open(cfg Config) (*Registry, error) {
	if cfg.Path == "" || cfg.Publisher == nil {
		return nil, errors.New("quay: Open needs a Path and a Publisher")
	}
	if cfg.Source == "" {
		cfg.Source = DefaultSource
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	db, err := sql.Open("sqlite", "file:"+cfg.Path+"?_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("quay: open %s: %w", cfg.Path, err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises anyway
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("quay: schema: %w", err)
	}
	var prefix string
	err = db.QueryRow(`SELECT value FROM meta WHERE key = 'id'`).Scan(&prefix)
	if errors.Is(err, sql.ErrNoRows) {
		var b [6]byte
		_, _ = rand.Read(b[:])
		prefix = "quay-" + hex.EncodeToString(b[:])
		_, err = db.Exec(`INSERT INTO meta (key, value) VALUES ('id', ?)`, prefix)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("quay: meta: %w", err)
	}
	if cfg.TimeMachine == nil {
		cfg.TimeMachine = func(string) time.Duration { return 0 }
	}
	return &Registry{db: db, pub: cfg.Publisher, source: cfg.Source, now: cfg.Now, window: cfg.TimeMachine, prefix: prefix}, nil
}

// Close closes the database.
func (r *Registry) Close() error { return r.db.Close() }

// DB is the database, for reading (tests, tools).
func (r *Registry) DB() *sql.DB { return r.db }

// Source is the event source the registry publishes as.
func (r *Registry) Source() string { return r.source }

// recoverableSince is the earliest lifetime_end (unix ms) of a tag of repo
// still in the time machine at the clock's now: rows that ended before it
// are garbage (gc.py's lookup_unrecoverable_tags).
func (r *Registry) recoverableSince(repo string) int64 {
	return r.now().Add(-r.window(repo)).UnixMilli() + 1
}

// tick returns the time of the next change: the clock, moved past the
// last one given so that times never repeat. The caller holds r.mu.
func (r *Registry) tick() time.Time {
	t := r.now().UTC()
	if !t.After(r.last) {
		t = r.last.Add(time.Microsecond)
	}
	r.last = t
	return t
}

// write runs fn in one transaction with an outbox writer, commits, and
// publishes the outbox.
func (r *Registry) write(ctx context.Context, fn func(w *writer) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	w := &writer{tx: tx, r: r, now: r.tick()}
	if err := fn(w); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	return r.flush(ctx)
}

// Flush publishes what the outbox holds (after a failed publish).
func (r *Registry) Flush(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flush(ctx)
}

func (r *Registry) flush(ctx context.Context) error {
	rows, err := r.db.QueryContext(ctx, `SELECT seq, event FROM outbox ORDER BY seq`)
	if err != nil {
		return err
	}
	var seqs []int64
	var evs []events.Event
	for rows.Next() {
		var seq int64
		var raw []byte
		if err := rows.Scan(&seq, &raw); err != nil {
			rows.Close()
			return err
		}
		var e events.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			rows.Close()
			return fmt.Errorf("quay: outbox %d: %w", seq, err)
		}
		seqs, evs = append(seqs, seq), append(evs, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(evs) == 0 {
		return err
	}
	if _, err := r.pub.PublishBatch(ctx, evs); err != nil {
		return fmt.Errorf("quay: publish (the outbox keeps the events): %w", err)
	}
	_, err = r.db.ExecContext(ctx, `DELETE FROM outbox WHERE seq <= ?`, seqs[len(seqs)-1])
	return err
}

// writer is one write transaction and the events it states.
type writer struct {
	tx  *sql.Tx
	r   *Registry
	now time.Time
}

// emit writes an event into the outbox, with an id made of the
// database's prefix and the outbox sequence.
func (w *writer) emit(e events.Event) error {
	e.V, e.Source, e.Time = events.Version, w.r.source, w.now
	res, err := w.tx.Exec(`INSERT INTO outbox (event) VALUES ('')`)
	if err != nil {
		return err
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return err
	}
	e.ID = fmt.Sprintf("%s-%d", w.r.prefix, seq)
	if err := e.Validate(); err != nil {
		return err
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = w.tx.Exec(`UPDATE outbox SET event = ? WHERE seq = ?`, raw, seq)
	return err
}

// PushBlob stores blob data (once, by digest) and links it into repo.
func (r *Registry) PushBlob(ctx context.Context, repo string, data []byte) (digest.Digest, error) {
	d := digest.FromBytes(data)
	err := r.write(ctx, func(w *writer) error {
		if _, err := w.blobID(d, data); err != nil {
			return err
		}
		return w.emit(events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: repo, Digest: d, Size: int64(len(data))}})
	})
	return d, err
}

func (w *writer) blobID(d digest.Digest, data []byte) (int64, error) {
	var id int64
	err := w.tx.QueryRow(`SELECT id FROM blob WHERE digest = ?`, d.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) && data != nil {
		res, err := w.tx.Exec(`INSERT INTO blob (digest, size, data) VALUES (?, ?, ?)`, d.String(), len(data), data)
		if err != nil {
			return 0, err
		}
		return res.LastInsertId()
	}
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: blob %s", ErrNotFound, d)
	}
	return id, err
}

// ManifestSpec is a manifest to push.
type ManifestSpec struct {
	Repo string
	// Tag, if set, points at the manifest.
	Tag string
	// Expires, with Tag, is when the tag expires (its lifetime_end).
	Expires time.Time
	// Blobs are its config and layers, pushed before (PushBlob).
	Blobs []digest.Digest
	// Labels are key=value pairs attached with the push.
	Labels []string
	// Legacy is the docker image id of the legacy image it stands for
	// (CreateLegacyImage first), if any.
	Legacy string
	// Nonce makes otherwise equal manifests differ.
	Nonce string
}

const manifestMediaType = "application/vnd.oci.image.manifest.v1+json"

// PushManifest stores a manifest, its blobs, legacy image and labels, and
// points its tag at it. It returns the manifest's digest.
func (r *Registry) PushManifest(ctx context.Context, s ManifestSpec) (digest.Digest, error) {
	body, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": manifestMediaType,
		"layers": s.Blobs, "legacy": s.Legacy, "nonce": s.Nonce})
	if err != nil {
		return "", err
	}
	d := digest.FromBytes(body)
	err = r.write(ctx, func(w *writer) error {
		var id int64
		err := w.tx.QueryRow(`SELECT id FROM manifest WHERE repo = ? AND digest = ?`, s.Repo, d.String()).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			res, err := w.tx.Exec(`INSERT INTO manifest (repo, digest, media_type, bytes) VALUES (?, ?, ?, ?)`,
				s.Repo, d.String(), manifestMediaType, body)
			if err != nil {
				return err
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		for _, b := range s.Blobs {
			bid, err := w.blobID(b, nil)
			if err != nil {
				return err
			}
			if _, err := w.tx.Exec(`INSERT OR IGNORE INTO manifest_blob (manifest_id, blob_id) VALUES (?, ?)`, id, bid); err != nil {
				return err
			}
		}
		if s.Legacy != "" {
			iid, err := w.imageID(s.Repo, s.Legacy)
			if err != nil {
				return err
			}
			if _, err := w.tx.Exec(`INSERT OR REPLACE INTO manifest_legacy_image (manifest_id, image_id) VALUES (?, ?)`, id, iid); err != nil {
				return err
			}
		}
		stmt, err := manifestStatement(w.tx, id)
		if err != nil {
			return err
		}
		if err := w.emit(stmt); err != nil {
			return err
		}
		for _, kv := range s.Labels {
			if _, err := w.attach(id, s.Repo, d, kv); err != nil {
				return err
			}
		}
		if s.Tag != "" {
			return w.setTag(s.Repo, s.Tag, id, d, s.Expires)
		}
		return nil
	})
	return d, err
}

func (w *writer) manifestID(repo string, d digest.Digest) (int64, error) {
	var id int64
	err := w.tx.QueryRow(`SELECT id FROM manifest WHERE repo = ? AND digest = ?`, repo, d.String()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: manifest %s@%s", ErrNotFound, repo, d)
	}
	return id, err
}

func (w *writer) imageID(repo, dockerID string) (int64, error) {
	var id int64
	err := w.tx.QueryRow(`SELECT id FROM image WHERE repo = ? AND docker_image_id = ?`, repo, dockerID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: image %s/%s", ErrNotFound, repo, dockerID)
	}
	return id, err
}

// setTag starts a lifetime of the tag at the manifest, until expires (zero:
// for ever). Every earlier lifetime of the tag goes: this registry keeps
// one state per tag, current or recoverable, as refgc's time machine does.
func (w *writer) setTag(repo, name string, manifestID int64, d digest.Digest, expires time.Time) error {
	if _, err := w.tx.Exec(`DELETE FROM tag WHERE repo = ? AND name = ?`, repo, name); err != nil {
		return err
	}
	var end sql.NullInt64
	if !expires.IsZero() {
		expires = expires.UTC()
		end = sql.NullInt64{Int64: expires.UnixMilli(), Valid: true}
	}
	_, err := w.tx.Exec(`INSERT INTO tag (repo, name, manifest_id, lifetime_start, lifetime_end) VALUES (?, ?, ?, ?, ?)`,
		repo, name, manifestID, w.now.UnixMilli(), end)
	if err != nil {
		return err
	}
	return w.emit(events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: repo, Name: name, Digest: d, Expires: expires}})
}

// currentClause is the condition of a tag row that is current at a time
// (unix ms, the one argument).
const currentClause = `(lifetime_end IS NULL OR lifetime_end > ?)`

// endTags ends the current lifetimes of repo's tags that match where (with
// args) now: into the time machine, or, without a window, gone at once.
// It returns how many it ended.
func (w *writer) endTags(repo, where string, args ...any) (int64, error) {
	nowMS := w.now.UnixMilli()
	res, err := w.tx.Exec(`UPDATE tag SET lifetime_end = ? WHERE `+where+` AND `+currentClause, append(append([]any{nowMS}, args...), nowMS)...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil || n == 0 || w.r.window(repo) > 0 {
		return n, err
	}
	_, err = w.tx.Exec(`DELETE FROM tag WHERE `+where+` AND lifetime_end = ?`, append(args, nowMS)...)
	return n, err
}

// SetTag points a tag at an existing manifest, until expires (zero: for ever).
func (r *Registry) SetTag(ctx context.Context, repo, name string, d digest.Digest, expires time.Time) error {
	return r.write(ctx, func(w *writer) error {
		id, err := w.manifestID(repo, d)
		if err != nil {
			return err
		}
		return w.setTag(repo, name, id, d, expires)
	})
}

// DeleteTag deletes a current tag: it stays recoverable for its
// repository's time machine window.
func (r *Registry) DeleteTag(ctx context.Context, repo, name string) error {
	return r.write(ctx, func(w *writer) error {
		n, err := w.endTags(repo, `repo = ? AND name = ?`, repo, name)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%w: tag %s:%s", ErrNotFound, repo, name)
		}
		return w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: repo, Name: name}})
	})
}

// PurgeRepository deletes a repository (Quay's purge_repository, done
// online): its current tags end now, into the time machine, and refgc's
// collector asks for the rest as it becomes garbage. A manifest pushed
// again later is the repository's again.
func (r *Registry) PurgeRepository(ctx context.Context, repo string) error {
	return r.write(ctx, func(w *writer) error {
		if _, err := w.endTags(repo, `repo = ?`, repo); err != nil {
			return err
		}
		return w.emit(events.Event{Kind: events.RepositoryDeleted, Repo: &events.Repo{Name: repo}})
	})
}

// AttachLabel attaches a new key=value label to a manifest and returns its id.
func (r *Registry) AttachLabel(ctx context.Context, repo string, d digest.Digest, kv string) (string, error) {
	var uuid string
	err := r.write(ctx, func(w *writer) error {
		id, err := w.manifestID(repo, d)
		if err != nil {
			return err
		}
		uuid, err = w.attach(id, repo, d, kv)
		return err
	})
	return uuid, err
}

func (w *writer) attach(manifestID int64, repo string, d digest.Digest, kv string) (string, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	uuid := "lbl-" + hex.EncodeToString(b[:])
	key, value := kv, ""
	for i := range kv {
		if kv[i] == '=' {
			key, value = kv[:i], kv[i+1:]
			break
		}
	}
	res, err := w.tx.Exec(`INSERT INTO label (repo, uuid, key, value) VALUES (?, ?, ?, ?)`, repo, uuid, key, value)
	if err != nil {
		return "", err
	}
	lid, err := res.LastInsertId()
	if err != nil {
		return "", err
	}
	return uuid, w.link(manifestID, lid, repo, d, uuid)
}

func (w *writer) link(manifestID, labelID int64, repo string, d digest.Digest, uuid string) error {
	if _, err := w.tx.Exec(`INSERT OR IGNORE INTO manifest_label (manifest_id, label_id) VALUES (?, ?)`, manifestID, labelID); err != nil {
		return err
	}
	return w.emit(events.Event{Kind: events.LabelAttached, Label: &events.Label{Repo: repo, Digest: d, ID: uuid}})
}

// ShareLabel attaches an existing label of the repository to another
// manifest of it.
func (r *Registry) ShareLabel(ctx context.Context, repo string, d digest.Digest, uuid string) error {
	return r.write(ctx, func(w *writer) error {
		id, err := w.manifestID(repo, d)
		if err != nil {
			return err
		}
		var lid int64
		err = w.tx.QueryRow(`SELECT id FROM label WHERE repo = ? AND uuid = ?`, repo, uuid).Scan(&lid)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: label %s", ErrNotFound, uuid)
		}
		if err != nil {
			return err
		}
		return w.link(id, lid, repo, d, uuid)
	})
}

// DetachLabel removes a label from a manifest. The label row stays until
// the collector finds no manifest carries it.
func (r *Registry) DetachLabel(ctx context.Context, repo string, d digest.Digest, uuid string) error {
	return r.write(ctx, func(w *writer) error {
		id, err := w.manifestID(repo, d)
		if err != nil {
			return err
		}
		res, err := w.tx.Exec(`DELETE FROM manifest_label WHERE manifest_id = ? AND label_id = (SELECT id FROM label WHERE uuid = ?)`, id, uuid)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: label %s on %s@%s", ErrNotFound, uuid, repo, d)
		}
		return w.emit(events.Event{Kind: events.LabelDetached, Label: &events.Label{Repo: repo, Digest: d, ID: uuid}})
	})
}

// CreateLegacyImage stores a legacy image whose layer is the blob storage
// (pushed before), with an optional parent image of the same repository.
func (r *Registry) CreateLegacyImage(ctx context.Context, repo, dockerID, parent string, storage digest.Digest) error {
	return r.write(ctx, func(w *writer) error {
		sid, err := w.blobID(storage, nil)
		if err != nil {
			return err
		}
		var pid sql.NullInt64
		if parent != "" {
			id, err := w.imageID(repo, parent)
			if err != nil {
				return err
			}
			pid = sql.NullInt64{Int64: id, Valid: true}
		}
		res, err := w.tx.Exec(`INSERT INTO image (repo, docker_image_id, parent_id, storage_id) VALUES (?, ?, ?, ?)`,
			repo, dockerID, pid, sid)
		if err != nil {
			return err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		stmt, err := imageStatement(w.tx, id)
		if err != nil {
			return err
		}
		return w.emit(stmt)
	})
}

// AddDerivedStorage stores a derived form of a legacy image (a squashed
// image, say) under transformation; an image has one per transformation.
func (r *Registry) AddDerivedStorage(ctx context.Context, repo, dockerID, transformation string, data []byte) (digest.Digest, error) {
	d := digest.FromBytes(data)
	err := r.write(ctx, func(w *writer) error {
		iid, err := w.imageID(repo, dockerID)
		if err != nil {
			return err
		}
		bid, err := w.blobID(d, data)
		if err != nil {
			return err
		}
		_, err = w.tx.Exec(`INSERT INTO derived_storage (source_image_id, derivative_id, transformation) VALUES (?, ?, ?)`,
			iid, bid, transformation)
		if err != nil {
			return err
		}
		return w.emit(events.Event{Kind: events.LegacyDerived, Legacy: &events.LegacyImage{Repo: repo, ID: dockerID, Derived: []digest.Digest{d}}})
	})
	return d, err
}
