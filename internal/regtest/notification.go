package regtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Notification is one event of a registry notification, decoded for a
// Match. Distribution v3.1.2 sends one event per notification (per POST).
type Notification struct {
	ID         string
	Timestamp  time.Time // as the registry stamped it, before any ShiftTime
	Action     string    // push, pull, mount or delete
	Repository string
	// FromRepository is the source repository of a mount.
	FromRepository string
	Tag            string
	MediaType      string
	Digest         string
	// URL is the target's URL: ".../manifests/<digest>" or ".../blobs/<digest>".
	// Deletes have none.
	URL        string
	InstanceID string // source.instanceID: the registry instance that sent it
	Addr       string // source.addr
	// Raw is the event as the registry sent it.
	Raw json.RawMessage
}

// IsManifest reports whether the target is a manifest. A delete names no
// URL or media type, so it is neither a manifest nor a blob here.
func (n Notification) IsManifest() bool { return strings.Contains(n.URL, "/manifests/") }

// IsBlob reports whether the target is a blob (see IsManifest for deletes).
func (n Notification) IsBlob() bool { return strings.Contains(n.URL, "/blobs/") }

// Match selects the notifications a fault applies to. A notification
// matches when one of its events does. A Match runs under the relay's lock:
// it must not call methods of Faults.
type Match func(Notification) bool

// On matches an action in a repository; an empty argument matches any.
func On(action, repo string) Match {
	return func(n Notification) bool {
		return (action == "" || n.Action == action) && (repo == "" || n.Repository == repo)
	}
}

// ManifestPush matches the push of a manifest to repo ("" for any).
func ManifestPush(repo string) Match {
	return And(On("push", repo), Notification.IsManifest)
}

// BlobPush matches the push of a blob to repo ("" for any).
func BlobPush(repo string) Match {
	return And(On("push", repo), Notification.IsBlob)
}

// And matches what every one of ms matches.
func And(ms ...Match) Match {
	return func(n Notification) bool {
		for _, m := range ms {
			if !m(n) {
				return false
			}
		}
		return true
	}
}

// wireEvent is the part of Distribution's event a Match looks at.
type wireEvent struct {
	ID        string    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Action    string    `json:"action"`
	Target    struct {
		MediaType      string `json:"mediaType"`
		Digest         string `json:"digest"`
		Repository     string `json:"repository"`
		FromRepository string `json:"fromRepository"`
		URL            string `json:"url"`
		Tag            string `json:"tag"`
	} `json:"target"`
	Source struct {
		Addr       string `json:"addr"`
		InstanceID string `json:"instanceID"`
	} `json:"source"`
}

// decodeNotifications decodes the events of an envelope, in order.
func decodeNotifications(body []byte) ([]Notification, error) {
	var env struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("regtest: notification envelope: %w", err)
	}
	out := make([]Notification, 0, len(env.Events))
	for i, raw := range env.Events {
		var e wireEvent
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("regtest: notification event %d: %w", i, err)
		}
		out = append(out, Notification{
			ID: e.ID, Timestamp: e.Timestamp, Action: e.Action,
			Repository: e.Target.Repository, FromRepository: e.Target.FromRepository,
			Tag: e.Target.Tag, MediaType: e.Target.MediaType, Digest: e.Target.Digest, URL: e.Target.URL,
			InstanceID: e.Source.InstanceID, Addr: e.Source.Addr, Raw: raw,
		})
	}
	return out, nil
}

var errNotObject = errors.New("not a JSON object")

// members calls fn with the key and the byte span of the value of every
// member of the JSON object obj, in order.
func members(obj []byte, fn func(key string, start, end int) error) error {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errNotObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		end := int(dec.InputOffset())
		start := end - len(v)
		if start < 0 || !bytes.Equal(obj[start:end], v) {
			return fmt.Errorf("value of %q: cannot locate its bytes", key)
		}
		if err := fn(key, start, end); err != nil {
			return err
		}
	}
	return nil
}

// elements calls fn with the byte span of every element of the JSON array arr.
func elements(arr []byte, fn func(start, end int) error) error {
	dec := json.NewDecoder(bytes.NewReader(arr))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return errors.New("not a JSON array")
	}
	for dec.More() {
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		end := int(dec.InputOffset())
		start := end - len(v)
		if start < 0 || !bytes.Equal(arr[start:end], v) {
			return errors.New("element: cannot locate its bytes")
		}
		if err := fn(start, end); err != nil {
			return err
		}
	}
	return nil
}

// shiftTimestamps returns body with the timestamp of its i-th event moved
// by offset(i). Every other byte is kept: member order, spacing and fields
// this package does not know.
func shiftTimestamps(body []byte, offset func(i int) time.Duration) ([]byte, error) {
	type edit struct {
		start, end int
		value      []byte
	}
	var edits []edit
	err := members(body, func(key string, s, e int) error {
		if key != "events" {
			return nil
		}
		i := 0
		return elements(body[s:e], func(es, ee int) error {
			es, ee = s+es, s+ee
			idx := i
			i++
			return members(body[es:ee], func(key string, ts, te int) error {
				if key != "timestamp" {
					return nil
				}
				ts, te = es+ts, es+te
				var t time.Time
				if err := json.Unmarshal(body[ts:te], &t); err != nil {
					return fmt.Errorf("event %d: timestamp: %w", idx, err)
				}
				v, err := json.Marshal(t.Add(offset(idx)))
				if err != nil {
					return fmt.Errorf("event %d: timestamp: %w", idx, err)
				}
				edits = append(edits, edit{ts, te, v})
				return nil
			})
		})
	})
	if err != nil {
		return nil, fmt.Errorf("regtest: shift timestamps: %w", err)
	}
	out := make([]byte, 0, len(body)+8*len(edits))
	last := 0
	for _, e := range edits {
		out = append(out, body[last:e.start]...)
		out = append(out, e.value...)
		last = e.end
	}
	return append(out, body[last:]...), nil
}
