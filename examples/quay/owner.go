package quay

// The deletion service: refgc's collector asks, one batch per request, to
// delete what its projection found unreferenced. Each item is checked and
// deleted in the request's one transaction with Quay's own rules
// (data/model/gc.py, _check_*_used), so nothing this database still uses
// is deleted, whatever the projection believed; what is still used is
// answered in_use with the statements of what holds it.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
)

// Serve runs the deletion service on nc, at the default subject of the
// registry's source, until the returned service is stopped.
func (r *Registry) Serve(nc *nats.Conn) (micro.Service, error) {
	return owner.AddService(nc, owner.ServiceConfig{Source: r.source, Name: "quay-owner", Handler: r.HandleDelete})
}

// HandleDelete answers one request of the collector (owner.Handler).
func (r *Registry) HandleDelete(ctx context.Context, req owner.Request) (owner.Response, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return owner.Response{}, err
	}
	defer func() { _ = tx.Rollback() }()
	now := r.tick()
	resp := owner.Response{V: owner.Version}
	// Holders first, as gc.py's loop goes: tags, manifests, images, then
	// labels and blobs, so that what a holder deleted here releases is
	// deleted in the same request.
	items := slices.Clone(req.Items)
	slices.SortStableFunc(items, func(a, b owner.Item) int { return kindOrder[a.Node.Kind] - kindOrder[b.Node.Kind] })
	for _, it := range items {
		res, err := r.deleteOne(tx, it, now.UnixMilli())
		if err != nil {
			return owner.Response{}, fmt.Errorf("quay: %s: %w", it.Node, err)
		}
		res.Intent = it.Intent
		if len(res.Statements) > maxStatements {
			// One holder is enough to hold it; a blob every manifest
			// uses must not make the answer larger than a message.
			res.Statements = res.Statements[:maxStatements]
		}
		for i := range res.Statements {
			res.Statements[i].V, res.Statements[i].Source, res.Statements[i].Time = events.Version, r.source, now
		}
		if res.Status == owner.StatusDeleted {
			if _, err := tx.Exec(`INSERT OR REPLACE INTO gc_intent (intent, status) VALUES (?, ?)`, it.Intent, string(res.Status)); err != nil {
				return owner.Response{}, err
			}
		}
		resp.Results = append(resp.Results, res)
	}
	if err := tx.Commit(); err != nil {
		return owner.Response{}, err
	}
	return resp, nil
}

func (r *Registry) deleteOne(tx *sql.Tx, it owner.Item, nowMS int64) (owner.Result, error) {
	var done string
	err := tx.QueryRow(`SELECT status FROM gc_intent WHERE intent = ?`, it.Intent).Scan(&done)
	switch {
	case err == nil:
		return owner.Result{Status: owner.Status(done)}, nil // a retried request
	case !errors.Is(err, sql.ErrNoRows):
		return owner.Result{}, err
	}
	n := it.Node
	absent := owner.Result{Status: owner.StatusAbsent}
	var id int64
	switch n.Kind {
	case events.NodeManifest:
		if err := scanID(tx, &id, `SELECT id FROM manifest WHERE repo = ? AND digest = ?`, n.Repo, n.Digest.String()); err != nil {
			return absentOr(err)
		}
		if stmts, err := tagStatements(tx, id); err != nil || len(stmts) > 0 {
			return inUse("tag", stmts, err)
		}
		return deleted(tx, []string{
			`DELETE FROM manifest_label WHERE manifest_id = ?`,
			`DELETE FROM manifest_blob WHERE manifest_id = ?`,
			`DELETE FROM manifest_legacy_image WHERE manifest_id = ?`,
			`DELETE FROM tag WHERE manifest_id = ?`, // lifetimes that ended
			`DELETE FROM manifest WHERE id = ?`,
		}, id)
	case events.NodeLabel:
		if err := scanID(tx, &id, `SELECT id FROM label WHERE repo = ? AND uuid = ?`, n.Repo, n.Name); err != nil {
			return absentOr(err)
		}
		if stmts, err := labelStatements(tx, id); err != nil || len(stmts) > 0 {
			return inUse("manifest_label", stmts, err)
		}
		return deleted(tx, []string{`DELETE FROM label WHERE id = ?`}, id)
	case events.NodeLegacy:
		if err := scanID(tx, &id, `SELECT id FROM image WHERE repo = ? AND docker_image_id = ?`, n.Repo, n.Name); err != nil {
			return absentOr(err)
		}
		manifests, err := statementsOf(tx, manifestStatement, `SELECT manifest_id FROM manifest_legacy_image WHERE image_id = ?`, id)
		if err != nil {
			return owner.Result{}, err
		}
		children, err := statementsOf(tx, imageStatement, `SELECT id FROM image WHERE parent_id = ?`, id)
		if stmts := append(manifests, children...); err != nil || len(stmts) > 0 {
			return inUse("legacy_image_used", stmts, err)
		}
		return deleted(tx, []string{
			`DELETE FROM derived_storage WHERE source_image_id = ?`, // derived storage goes with its image
			`DELETE FROM image WHERE id = ?`,
		}, id)
	case events.NodeBlob:
		if err := scanID(tx, &id, `SELECT id FROM blob WHERE digest = ?`, n.Digest.String()); err != nil {
			return absentOr(err)
		}
		stmts, err := blobHolders(tx, id, n)
		if err != nil || len(stmts) > 0 {
			return inUse("blob_used", stmts, err)
		}
		return deleted(tx, []string{`DELETE FROM blob WHERE id = ?`}, id)
	case events.NodeTag:
		// Tags whose lifetime ended (expiry); a current one is in use.
		stmts, err := currentTag(tx, n.Repo, n.Name, nowMS)
		if err != nil || len(stmts) > 0 {
			return inUse("tag_current", stmts, err)
		}
		res, err := tx.Exec(`DELETE FROM tag WHERE repo = ? AND name = ? AND lifetime_end IS NOT NULL AND lifetime_end <= ?`, n.Repo, n.Name, nowMS)
		if err != nil {
			return owner.Result{}, err
		}
		if k, _ := res.RowsAffected(); k > 0 {
			return owner.Result{Status: owner.StatusDeleted}, nil
		}
		return absent, nil
	}
	// Layer links: Quay links blobs to manifests, not to repositories.
	return absent, nil
}

// maxStatements bounds the statements of one in_use answer.
const maxStatements = 16

var kindOrder = map[events.NodeKind]int{events.NodeTag: 0, events.NodeManifest: 1, events.NodeLegacy: 2,
	events.NodeLabel: 3, events.NodeLayer: 4, events.NodeBlob: 5}

func scanID(tx *sql.Tx, id *int64, query string, args ...any) error {
	return tx.QueryRow(query, args...).Scan(id)
}

func absentOr(err error) (owner.Result, error) {
	if errors.Is(err, sql.ErrNoRows) {
		return owner.Result{Status: owner.StatusAbsent}, nil
	}
	return owner.Result{}, err
}

func inUse(reason string, stmts []events.Event, err error) (owner.Result, error) {
	if err != nil {
		return owner.Result{}, err
	}
	return owner.Result{Status: owner.StatusInUse, Reason: reason, Statements: stmts}, nil
}

func deleted(tx *sql.Tx, stmts []string, id int64) (owner.Result, error) {
	for _, s := range stmts {
		if _, err := tx.Exec(s, id); err != nil {
			return owner.Result{}, err
		}
	}
	return owner.Result{Status: owner.StatusDeleted}, nil
}

// blobHolders states what holds a blob: manifests, images, derived storage.
func blobHolders(tx *sql.Tx, id int64, n events.NodeRef) ([]events.Event, error) {
	manifests, err := statementsOf(tx, manifestStatement, `SELECT manifest_id FROM manifest_blob WHERE blob_id = ?`, id)
	if err != nil {
		return nil, err
	}
	images, err := statementsOf(tx, imageStatement, `SELECT id FROM image WHERE storage_id = ?
		UNION SELECT source_image_id FROM derived_storage WHERE derivative_id = ?`, id, id)
	return append(manifests, images...), err
}

func currentTag(tx *sql.Tx, repo, name string, nowMS int64) ([]events.Event, error) {
	var t events.Tag
	err := tx.QueryRow(`SELECT t.repo, t.name, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id
		WHERE t.repo = ? AND t.name = ? AND (t.lifetime_end IS NULL OR t.lifetime_end > ?)`, repo, name, nowMS).
		Scan(&t.Repo, &t.Name, &t.Digest)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return []events.Event{{Kind: events.TagSet, Tag: &t}}, nil
}
