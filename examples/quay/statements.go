package quay

// Statements: each row that holds something becomes the event that states
// it. The writes publish them, and the owner answers with them when it
// still uses an object the collector asked about.

import (
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

// querier is a transaction or the database.
type querier interface {
	QueryRow(query string, args ...any) *sql.Row
	Query(query string, args ...any) (*sql.Rows, error)
}

// manifestStatement is the manifest.pushed of a manifest row: its blobs
// and its legacy image. (Labels have their own events.)
func manifestStatement(q querier, id int64) (events.Event, error) {
	m := &events.Manifest{}
	var body []byte
	err := q.QueryRow(`SELECT repo, digest, media_type, bytes FROM manifest WHERE id = ?`, id).Scan(&m.Repo, &m.Digest, &m.MediaType, &body)
	if err != nil {
		return events.Event{}, fmt.Errorf("quay: manifest %d: %w", id, err)
	}
	m.Size = int64(len(body))
	m.Blobs, err = scanRows(q, `SELECT b.digest, b.size FROM manifest_blob mb JOIN blob b ON b.id = mb.blob_id
		WHERE mb.manifest_id = ? ORDER BY b.digest`, []any{id}, func(r *sql.Rows) (events.Descriptor, error) {
		var d events.Descriptor
		err := r.Scan(&d.Digest, &d.Size)
		return d, err
	})
	if err != nil {
		return events.Event{}, err
	}
	err = q.QueryRow(`SELECT i.docker_image_id FROM manifest_legacy_image ml JOIN image i ON i.id = ml.image_id
		WHERE ml.manifest_id = ?`, id).Scan(&m.Legacy)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return events.Event{}, err
	}
	return events.Event{Kind: events.ManifestPushed, Manifest: m}, nil
}

// imageStatement is the legacy.created of an image row, with its derived storage.
func imageStatement(q querier, id int64) (events.Event, error) {
	l := &events.LegacyImage{}
	var parent sql.NullString
	err := q.QueryRow(`SELECT i.repo, i.docker_image_id, p.docker_image_id, b.digest FROM image i
		JOIN blob b ON b.id = i.storage_id LEFT JOIN image p ON p.id = i.parent_id WHERE i.id = ?`, id).
		Scan(&l.Repo, &l.ID, &parent, &l.Storage)
	if err != nil {
		return events.Event{}, fmt.Errorf("quay: image %d: %w", id, err)
	}
	l.Parent = parent.String
	l.Derived, err = scanRows(q, `SELECT b.digest FROM derived_storage ds JOIN blob b ON b.id = ds.derivative_id
		WHERE ds.source_image_id = ? ORDER BY b.digest`, []any{id}, func(r *sql.Rows) (digest.Digest, error) {
		var d digest.Digest
		err := r.Scan(&d)
		return d, err
	})
	return events.Event{Kind: events.LegacyImageCreated, Legacy: l}, err
}

// labelStatements are the label.attached of every manifest carrying a label.
func labelStatements(q querier, labelID int64) ([]events.Event, error) {
	return scanRows(q, `SELECT m.repo, m.digest, l.uuid FROM manifest_label ml JOIN manifest m ON m.id = ml.manifest_id
		JOIN label l ON l.id = ml.label_id WHERE ml.label_id = ?`, []any{labelID}, func(r *sql.Rows) (events.Event, error) {
		l := &events.Label{}
		err := r.Scan(&l.Repo, &l.Digest, &l.ID)
		return events.Event{Kind: events.LabelAttached, Label: l}, err
	})
}

// currentTags are the tag.set (with their expiry) of the tags current at
// nowMS among the rows that where (on table t, with args) selects.
func currentTags(q querier, nowMS int64, where string, args ...any) ([]events.Event, error) {
	return scanRows(q, `SELECT t.repo, t.name, m.digest, t.lifetime_end FROM tag t JOIN manifest m ON m.id = t.manifest_id
		WHERE `+where+` AND (t.lifetime_end IS NULL OR t.lifetime_end > ?)`, append(args, nowMS), func(r *sql.Rows) (events.Event, error) {
		t := &events.Tag{}
		var end sql.NullInt64
		err := r.Scan(&t.Repo, &t.Name, &t.Digest, &end)
		if end.Valid {
			t.Expires = time.UnixMilli(end.Int64).UTC()
		}
		return events.Event{Kind: events.TagSet, Tag: t}, err
	})
}

// statementsOf states each row a query finds, with state.
func statementsOf(q querier, state func(querier, int64) (events.Event, error), query string, args ...any) ([]events.Event, error) {
	rowIDs, err := ids(q, query, args...)
	if err != nil {
		return nil, err
	}
	out := make([]events.Event, 0, len(rowIDs))
	for _, id := range rowIDs {
		e, err := state(q, id)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// ids runs a query that returns row ids.
func ids(q querier, query string, args ...any) ([]int64, error) {
	return scanRows(q, query, args, func(r *sql.Rows) (int64, error) {
		var id int64
		err := r.Scan(&id)
		return id, err
	})
}

// scanRows reads every row of a query with scan.
func scanRows[T any](q querier, query string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	rows, err := q.Query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
