package quay

// Statements: each row that holds something becomes the event that states
// it. The writes publish them, and the owner answers with them when it
// still uses an object the collector asked about.

import (
	"database/sql"
	"fmt"

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
	rows, err := q.Query(`SELECT b.digest, b.size FROM manifest_blob mb JOIN blob b ON b.id = mb.blob_id
		WHERE mb.manifest_id = ? ORDER BY b.digest`, id)
	if err != nil {
		return events.Event{}, err
	}
	for rows.Next() {
		var d events.Descriptor
		if err := rows.Scan(&d.Digest, &d.Size); err != nil {
			rows.Close()
			return events.Event{}, err
		}
		m.Blobs = append(m.Blobs, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return events.Event{}, err
	}
	err = q.QueryRow(`SELECT i.docker_image_id FROM manifest_legacy_image ml JOIN image i ON i.id = ml.image_id
		WHERE ml.manifest_id = ?`, id).Scan(&m.Legacy)
	if err != nil && err != sql.ErrNoRows {
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
	rows, err := q.Query(`SELECT b.digest FROM derived_storage ds JOIN blob b ON b.id = ds.derivative_id
		WHERE ds.source_image_id = ? ORDER BY b.digest`, id)
	if err != nil {
		return events.Event{}, err
	}
	defer rows.Close()
	for rows.Next() {
		var d digest.Digest
		if err := rows.Scan(&d); err != nil {
			return events.Event{}, err
		}
		l.Derived = append(l.Derived, d)
	}
	return events.Event{Kind: events.LegacyImageCreated, Legacy: l}, rows.Err()
}

// labelStatements are the label.attached of every manifest carrying a label.
func labelStatements(q querier, labelID int64) ([]events.Event, error) {
	rows, err := q.Query(`SELECT m.repo, m.digest, l.uuid FROM manifest_label ml JOIN manifest m ON m.id = ml.manifest_id
		JOIN label l ON l.id = ml.label_id WHERE ml.label_id = ?`, labelID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []events.Event
	for rows.Next() {
		l := &events.Label{}
		if err := rows.Scan(&l.Repo, &l.Digest, &l.ID); err != nil {
			return nil, err
		}
		out = append(out, events.Event{Kind: events.LabelAttached, Label: l})
	}
	return out, rows.Err()
}

// tagStatements are the tag.set of every current tag pointing at a manifest.
func tagStatements(q querier, manifestID int64) ([]events.Event, error) {
	rows, err := q.Query(`SELECT t.repo, t.name, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id
		WHERE t.manifest_id = ? AND t.lifetime_end IS NULL`, manifestID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []events.Event
	for rows.Next() {
		t := &events.Tag{}
		if err := rows.Scan(&t.Repo, &t.Name, &t.Digest); err != nil {
			return nil, err
		}
		out = append(out, events.Event{Kind: events.TagSet, Tag: t})
	}
	return out, rows.Err()
}

// ids runs a query that returns row ids.
func ids(q querier, query string, args ...any) ([]int64, error) {
	rows, err := q.Query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
