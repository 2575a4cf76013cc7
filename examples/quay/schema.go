package quay

// schema is Quay's garbage-collection tables, reduced to what refgc's rules
// read (data/database.py: Tag, Manifest, ManifestBlob, ManifestLabel,
// Label, Image, ManifestLegacyImage, DerivedStorageForImage, ImageStorage),
// plus this publisher's outbox and the owner's record of intents.
const schema = `
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
-- ImageStorage: blob data, global by digest.
CREATE TABLE IF NOT EXISTS blob (
	id     INTEGER PRIMARY KEY,
	digest TEXT NOT NULL UNIQUE,
	size   INTEGER NOT NULL,
	data   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS manifest (
	id         INTEGER PRIMARY KEY,
	repo       TEXT NOT NULL,
	digest     TEXT NOT NULL,
	media_type TEXT NOT NULL,
	bytes      BLOB NOT NULL,
	UNIQUE (repo, digest)
);
CREATE TABLE IF NOT EXISTS manifest_blob (
	manifest_id INTEGER NOT NULL REFERENCES manifest (id),
	blob_id     INTEGER NOT NULL REFERENCES blob (id),
	PRIMARY KEY (manifest_id, blob_id)
);
CREATE INDEX IF NOT EXISTS manifest_blob_blob ON manifest_blob (blob_id);
-- A tag's lifetime, as Quay's oci tag table keeps it: lifetime_end is NULL
-- while the tag is current for ever, in the future while it is current
-- until it expires, and in the past once it was deleted, expired or purged.
-- An ended row stays, holding its manifest, for its repository's time
-- machine window (removed_tag_expiration_s in Quay); past it, it is
-- garbage (gc.py's lookup_unrecoverable_tags), deleted when refgc asks.
-- Setting a tag replaces every earlier lifetime of it (this registry keeps
-- one recoverable state per tag, as refgc's time machine does).
CREATE TABLE IF NOT EXISTS tag (
	id             INTEGER PRIMARY KEY,
	repo           TEXT NOT NULL,
	name           TEXT NOT NULL,
	manifest_id    INTEGER NOT NULL REFERENCES manifest (id),
	lifetime_start INTEGER NOT NULL,
	lifetime_end   INTEGER
);
CREATE INDEX IF NOT EXISTS tag_manifest ON tag (manifest_id);
CREATE INDEX IF NOT EXISTS tag_name ON tag (repo, name);
CREATE TABLE IF NOT EXISTS label (
	id    INTEGER PRIMARY KEY,
	repo  TEXT NOT NULL,
	uuid  TEXT NOT NULL UNIQUE,
	key   TEXT NOT NULL,
	value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifest_label (
	manifest_id INTEGER NOT NULL REFERENCES manifest (id),
	label_id    INTEGER NOT NULL REFERENCES label (id),
	PRIMARY KEY (manifest_id, label_id)
);
CREATE INDEX IF NOT EXISTS manifest_label_label ON manifest_label (label_id);
-- Image: a legacy (v1) image with its parent and its layer's storage.
CREATE TABLE IF NOT EXISTS image (
	id              INTEGER PRIMARY KEY,
	repo            TEXT NOT NULL,
	docker_image_id TEXT NOT NULL,
	parent_id       INTEGER REFERENCES image (id),
	storage_id      INTEGER NOT NULL REFERENCES blob (id),
	UNIQUE (repo, docker_image_id)
);
CREATE INDEX IF NOT EXISTS image_parent ON image (parent_id);
CREATE INDEX IF NOT EXISTS image_storage ON image (storage_id);
CREATE TABLE IF NOT EXISTS manifest_legacy_image (
	manifest_id INTEGER PRIMARY KEY REFERENCES manifest (id),
	image_id    INTEGER NOT NULL REFERENCES image (id)
);
CREATE INDEX IF NOT EXISTS manifest_legacy_image_image ON manifest_legacy_image (image_id);
CREATE TABLE IF NOT EXISTS derived_storage (
	id             INTEGER PRIMARY KEY,
	source_image_id INTEGER NOT NULL REFERENCES image (id),
	derivative_id  INTEGER NOT NULL REFERENCES blob (id),
	transformation TEXT NOT NULL,
	UNIQUE (source_image_id, transformation)
);
CREATE INDEX IF NOT EXISTS derived_storage_derivative ON derived_storage (derivative_id);
-- Events written in the transaction of the change they state, published
-- after it commits and deleted once JetStream has them.
CREATE TABLE IF NOT EXISTS outbox (
	seq   INTEGER PRIMARY KEY AUTOINCREMENT,
	event BLOB NOT NULL
);
-- Deletions and restores done for refgc's intents: a retried request gets
-- the same answer.
CREATE TABLE IF NOT EXISTS gc_intent (
	intent TEXT PRIMARY KEY,
	status TEXT NOT NULL
);
`
