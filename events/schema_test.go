package events

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/refgc/refgc/events/schema"
)

func validateAgainst(v int, b []byte) error { return schema.Validate(v, b) }

// TestSchemaAcceptsEncodedEvents validates the encoding of a valid event of
// every kind, as Encode writes it, against the published schema.
func TestSchemaAcceptsEncodedEvents(t *testing.T) {
	evs := validEvents()
	evs = append(evs, Event{ID: "expiring", Time: evTime, Kind: TagSet,
		Tag: &Tag{Repo: "app", Name: "v1", Digest: dA, Expires: evTime.Add(time.Hour)}})
	seen := map[Kind]bool{}
	for _, e := range evs {
		t.Run(string(e.Kind)+"/"+e.ID, func(t *testing.T) {
			b, err := Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateAgainst(Version, b); err != nil {
				t.Fatalf("schema refuses a valid event %s: %v", b, err)
			}
		})
		seen[e.Kind] = true
	}
	for _, k := range Kinds {
		if !seen[k] {
			t.Errorf("no example of kind %s is validated against the schema", k)
		}
	}
}

// TestSchemaFixtures validates the native fixtures: the valid-* files pass
// both the schema and Decode, the invalid-* files fail both.
func TestSchemaFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "native", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			schemaErr := validateAgainst(Version, b)
			_, decodeErr := Decode(b)
			switch {
			case strings.HasPrefix(name, "valid-"):
				if schemaErr != nil || decodeErr != nil {
					t.Fatalf("schema: %v; Decode: %v", schemaErr, decodeErr)
				}
			case strings.HasPrefix(name, "invalid-"):
				if schemaErr == nil || decodeErr == nil {
					t.Fatalf("accepted: schema error %v, Decode error %v (both must refuse)", schemaErr, decodeErr)
				}
			default:
				t.Fatalf("fixture %s is neither valid-* nor invalid-*", name)
			}
		})
	}
}

// TestSchemaRefusesWhatValidateRefuses mutates valid events into invalid
// ones and checks that the schema refuses each, as Validate does.
func TestSchemaRefusesWhatValidateRefuses(t *testing.T) {
	cases := map[string]func(*Event){
		"no id":              func(e *Event) { e.ID = "" },
		"id with space":      func(e *Event) { e.ID = "a b" },
		"bad repo":           func(e *Event) { e.Tag.Repo = "../etc" },
		"bad tag":            func(e *Event) { e.Tag.Name = "-x" },
		"bad digest":         func(e *Event) { e.Tag.Digest = "sha256:abc" },
		"unknown kind":       func(e *Event) { e.Kind = "tag.moved" },
		"second body":        func(e *Event) { e.Repo = &Repo{Name: "app"} },
		"wrong body":         func(e *Event) { e.Kind = RepositoryDeleted },
		"newer version":      func(e *Event) { e.V = Version + 1 },
		"expiry on a delete": func(e *Event) { e.Kind, e.Tag.Digest, e.Tag.Expires = TagDeleted, "", evTime },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			e := Event{V: Version, ID: "m", Time: evTime, Kind: TagSet, Tag: &Tag{Repo: "app", Name: "v1", Digest: dA}}
			mutate(&e)
			if e.Validate() == nil {
				t.Fatal("the case is valid for Validate: fix the test")
			}
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if validateAgainst(Version, b) == nil {
				t.Fatalf("schema accepts %s", b)
			}
		})
	}
}

// TestSchemaMatchesTypes checks that the schema names exactly the kinds of
// Kinds and exactly the JSON fields of the envelope and body types.
func TestSchemaMatchesTypes(t *testing.T) {
	raw, err := schema.JSON(Version)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	defs := doc["$defs"].(map[string]any)
	var kinds []string
	for _, k := range defs["kind"].(map[string]any)["enum"].([]any) {
		kinds = append(kinds, k.(string))
	}
	var want []string
	for _, k := range Kinds {
		want = append(want, string(k))
	}
	sort.Strings(kinds)
	sort.Strings(want)
	if !slices.Equal(kinds, want) {
		t.Errorf("schema kinds %v, Go kinds %v", kinds, want)
	}
	props := func(def map[string]any) []string {
		var out []string
		for k := range def["properties"].(map[string]any) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	types := map[string]any{"": Event{}, "manifest": Manifest{}, "descriptor": Descriptor{}, "tag": Tag{},
		"ref": RepoDigest{}, "blob": Blob{}, "repo": Repo{}, "label": Label{}, "legacy": LegacyImage{},
		"node": NodeRef{}, "absent": Observation{}, "collected": CollectedRef{}, "refused": RefusedRef{},
		"reconcile": Reconciliation{}, "held": Holding{}}
	for def, v := range types {
		t.Run("def "+def, func(t *testing.T) {
			sch := doc
			if def != "" {
				sch = defs[def].(map[string]any)
			}
			if got, want := props(sch), jsonFields(reflect.TypeOf(v)); !slices.Equal(got, want) {
				t.Errorf("schema properties %v, Go JSON fields %v", got, want)
			}
		})
	}
}

func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
