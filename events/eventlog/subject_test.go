package eventlog_test

import (
	"github.com/refgc/refgc/events/eventlog"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
)

func TestSubject(t *testing.T) {
	d := digest.FromString("x")
	tests := []struct {
		name string
		e    events.Event
		want string
	}{
		{"manifest", events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "library/alpine", Digest: d}},
			"refgc.events.manifest_pushed.library.alpine"},
		{"single component", events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: "alpine", Name: "3"}},
			"refgc.events.tag_set.alpine"},
		{"dots escaped", events.Event{Kind: events.BlobPushed, Blob: &events.Blob{Repo: "my.org/app.v2/x", Digest: d}},
			"refgc.events.blob_pushed.my~org.app~v2.x"},
		{"separators kept", events.Event{Kind: events.Touched, Ref: &events.RepoDigest{Repo: "a_b/c__d/e--f", Digest: d}},
			"refgc.events.touched.a_b.c__d.e--f"},
		{"repository deleted", events.Event{Kind: events.RepositoryDeleted, Repo: &events.Repo{Name: "team/app"}},
			"refgc.events.repository_deleted.team.app"},
		{"no repository", events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: d}},
			"refgc.events.blob_observed._"},
		{"collected blob", events.Event{Kind: events.Collected, Collected: &events.CollectedRef{Node: events.NodeRef{Kind: events.NodeBlob, Digest: d}}},
			"refgc.events.gc_collected._"},
		{"collected manifest", events.Event{Kind: events.Collected, Collected: &events.CollectedRef{Node: events.NodeRef{Kind: events.NodeManifest, Repo: "a/b", Digest: d}}},
			"refgc.events.gc_collected.a.b"},
		{"absent", events.Event{Kind: events.ObservedAbsent, Absent: &events.Observation{Node: events.NodeRef{Kind: events.NodeTag, Repo: "a", Name: "t"}}},
			"refgc.events.observed_absent.a"},
		{"label", events.Event{Kind: events.LabelAttached, Label: &events.Label{Repo: "l/m", Digest: d, ID: "x"}},
			"refgc.events.label_attached.l.m"},
		{"legacy", events.Event{Kind: events.LegacyImageCreated, Legacy: &events.LegacyImage{Repo: "old", ID: "1"}},
			"refgc.events.legacy_created.old"},
		{"malformed names never make wildcards", events.Event{Kind: "a.*", Blob: &events.Blob{Repo: "x/>/ /", Digest: d}},
			"refgc.events.a__.x._._._"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eventlog.Subject(tt.e); got != tt.want {
				t.Errorf("Subject = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestSubjectEveryKind checks that every kind maps to a distinct token
// under the stream's subjects.
func TestSubjectEveryKind(t *testing.T) {
	seen := map[string]events.Kind{}
	for _, k := range events.Kinds {
		s := eventlog.Subject(events.Event{Kind: k})
		if !subjectMatches(eventlog.SubjectPrefix+">", s) {
			t.Errorf("%s: subject %q outside the stream", k, s)
		}
		if prev, dup := seen[s]; dup {
			t.Errorf("kinds %s and %s share subject %q", prev, k, s)
		}
		seen[s] = k
	}
}

func TestSubjectFilter(t *testing.T) {
	d := digest.FromString("x")
	alpine := events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "library/alpine", Digest: d}}
	alpineTag := events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: "library/alpine", Name: "3"}}
	deeper := events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "library/alpine/x", Digest: d}}
	dotted := events.Event{Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "my.org/app", Digest: d}}
	global := events.Event{Kind: events.BlobObserved, Blob: &events.Blob{Digest: d}}
	tests := []struct {
		kind    events.Kind
		repo    string
		want    string
		matches []events.Event
		misses  []events.Event
	}{
		{"", "", "refgc.events.*.>", []events.Event{alpine, alpineTag, deeper, global}, nil},
		{events.ManifestPushed, "", "refgc.events.manifest_pushed.>", []events.Event{alpine, deeper, dotted}, []events.Event{alpineTag, global}},
		{"", "library/alpine", "refgc.events.*.library.alpine", []events.Event{alpine, alpineTag}, []events.Event{deeper, global}},
		{events.TagSet, "library/alpine", "refgc.events.tag_set.library.alpine", []events.Event{alpineTag}, []events.Event{alpine}},
		{"", "my.org/app", "refgc.events.*.my~org.app", []events.Event{dotted}, []events.Event{alpine}},
		{"", eventlog.NoRepoToken, "refgc.events.*._", []events.Event{global}, []events.Event{alpine}},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			f := eventlog.SubjectFilter(tt.kind, tt.repo)
			if f != tt.want {
				t.Fatalf("SubjectFilter(%q, %q) = %q, want %q", tt.kind, tt.repo, f, tt.want)
			}
			for _, e := range tt.matches {
				if !subjectMatches(f, eventlog.Subject(e)) {
					t.Errorf("%q does not match %q", f, eventlog.Subject(e))
				}
			}
			for _, e := range tt.misses {
				if subjectMatches(f, eventlog.Subject(e)) {
					t.Errorf("%q matches %q", f, eventlog.Subject(e))
				}
			}
		})
	}
}

// subjectMatches implements NATS subject matching ('*' one token, '>' the rest).
func subjectMatches(filter, subject string) bool {
	ft, st := splitTokens(filter), splitTokens(subject)
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

func splitTokens(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}
