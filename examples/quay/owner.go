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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
)

// Serve runs the deletion service on nc, at the default subject of the
// registry's source, until the returned service is stopped.
func (r *Registry) Serve(nc *nats.Conn) (micro.Service, error) {
	return owner.AddService(nc, owner.ServiceConfig{Source: r.source, Name: "quay-owner", Handler: r.HandleDelete, Restore: r.HandleRestore})
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
	now, clock := r.tick(), r.now()
	resp := owner.Response{V: owner.Version}
	// Holders first, as gc.py's loop goes: tags, manifests, images, then
	// labels and blobs, so that what a holder deleted here releases is
	// deleted in the same request.
	items := slices.Clone(req.Items)
	slices.SortStableFunc(items, func(a, b owner.Item) int { return kindOrder[a.Node.Kind] - kindOrder[b.Node.Kind] })
	for _, it := range items {
		res, err := r.deleteOne(tx, it, clock.UnixMilli())
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
		// Lifetimes past the time machine first, as gc.py's
		// garbage_collect_repo purges them before their manifests.
		if _, err := tx.Exec(`DELETE FROM tag WHERE manifest_id = ? AND lifetime_end < ?`, id, r.recoverableSince(n.Repo)); err != nil {
			return owner.Result{}, err
		}
		if stmts, err := currentTags(tx, nowMS, `t.manifest_id = ?`, id); err != nil || len(stmts) > 0 {
			return inUse("tag", stmts, err)
		}
		if exists, err := hasRow(tx, `SELECT 1 FROM tag WHERE manifest_id = ?`, id); err != nil || exists {
			return inTimeMachine(err)
		}
		return deleted(tx, []string{
			`DELETE FROM manifest_label WHERE manifest_id = ?`,
			`DELETE FROM manifest_blob WHERE manifest_id = ?`,
			`DELETE FROM manifest_legacy_image WHERE manifest_id = ?`,
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
		// refgc's time machine window of the tag ended: its lifetimes
		// past this registry's window go; a current one is in use.
		if stmts, err := currentTags(tx, nowMS, `t.repo = ? AND t.name = ?`, n.Repo, n.Name); err != nil || len(stmts) > 0 {
			return inUse("tag_current", stmts, err)
		}
		res, err := tx.Exec(`DELETE FROM tag WHERE repo = ? AND name = ? AND lifetime_end < ?`, n.Repo, n.Name, r.recoverableSince(n.Repo))
		if err != nil {
			return owner.Result{}, err
		}
		if exists, err := hasRow(tx, `SELECT 1 FROM tag WHERE repo = ? AND name = ?`, n.Repo, n.Name); err != nil || exists {
			return inTimeMachine(err)
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

// inTimeMachine refuses to delete what a recoverable tag still holds: a
// window longer than refgc's, or a clock behind its; refgc asks again.
func inTimeMachine(err error) (owner.Result, error) {
	if err != nil {
		return owner.Result{}, err
	}
	return owner.Result{Status: owner.StatusRefused, Reason: "time_machine"}, nil
}

// hasRow reports whether a query finds a row.
func hasRow(tx *sql.Tx, query string, args ...any) (bool, error) {
	var one int
	err := tx.QueryRow(query+` LIMIT 1`, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// HandleRestore answers a restore request of the collector (`refgc
// restore REPO:TAG`): a tag with a lifetime still in the time machine,
// and none current, is set again at that lifetime's manifest, published
// as any change is, and answered restored with its tag.set.
func (r *Registry) HandleRestore(ctx context.Context, req owner.Request) (owner.Response, error) {
	resp := owner.Response{V: owner.Version}
	err := r.write(ctx, func(w *writer) error {
		resp.Results = resp.Results[:0]
		for _, it := range req.Items {
			res, err := w.restoreOne(it)
			if err != nil {
				return fmt.Errorf("quay: restore %s: %w", it.Node, err)
			}
			res.Intent = it.Intent
			resp.Results = append(resp.Results, res)
		}
		return nil
	})
	return resp, err
}

func (w *writer) restoreOne(it owner.Item) (owner.Result, error) {
	n, nowMS := it.Node, w.r.now().UnixMilli()
	current, err := currentTags(w.tx, nowMS, `t.repo = ? AND t.name = ?`, n.Repo, n.Name)
	if err != nil {
		return owner.Result{}, err
	}
	var done string
	err = w.tx.QueryRow(`SELECT status FROM gc_intent WHERE intent = ?`, it.Intent).Scan(&done)
	switch {
	case err == nil:
		return owner.Result{Status: owner.Status(done), Statements: w.stamp(current)}, nil // a retried request
	case !errors.Is(err, sql.ErrNoRows):
		return owner.Result{}, err
	case len(current) > 0:
		return owner.Result{Status: owner.StatusRefused, Reason: "tag_current", Detail: "the tag is current: nothing to restore"}, nil
	}
	var mid int64
	var d digest.Digest
	err = w.tx.QueryRow(`SELECT t.manifest_id, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id
		WHERE t.repo = ? AND t.name = ? AND t.lifetime_end >= ? ORDER BY t.lifetime_end DESC LIMIT 1`,
		n.Repo, n.Name, w.r.recoverableSince(n.Repo)).Scan(&mid, &d)
	if errors.Is(err, sql.ErrNoRows) {
		return owner.Result{Status: owner.StatusAbsent}, nil
	}
	if err != nil {
		return owner.Result{}, err
	}
	if err := w.setTag(n.Repo, n.Name, mid, d, time.Time{}); err != nil {
		return owner.Result{}, err
	}
	if _, err := w.tx.Exec(`INSERT INTO gc_intent (intent, status) VALUES (?, ?)`, it.Intent, string(owner.StatusRestored)); err != nil {
		return owner.Result{}, err
	}
	return owner.Result{Status: owner.StatusRestored, Statements: w.stamp([]events.Event{
		{Kind: events.TagSet, Tag: &events.Tag{Repo: n.Repo, Name: n.Name, Digest: d}}})}, nil
}

// stamp gives statements the write's time and the registry's source.
func (w *writer) stamp(evs []events.Event) []events.Event {
	for i := range evs {
		evs[i].V, evs[i].Source, evs[i].Time = events.Version, w.r.source, w.now
	}
	return evs
}
