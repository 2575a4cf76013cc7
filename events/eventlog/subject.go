package eventlog

import (
	"strings"

	"github.com/refgc/refgc/events"
)

// Subject layout of the event log:
//
//	refgc.events.<kind>.<repository path components...>
//
// <kind> is the event kind with '.' replaced by '_' (manifest.pushed becomes
// manifest_pushed; kinds never hold '_', so the mapping is reversible).
// Each path component of the repository becomes one subject token, with a
// '.' inside a component escaped as '~' (the repository grammar never holds
// '~'), so library/alpine becomes library.alpine and my.org/app becomes
// my~org.app. An event that names no repository uses the single token
// NoRepoToken ("_", which the grammar never allows as a whole component).
// Consumers filter with SubjectFilter; the event log stream captures
// SubjectPrefix + ">".
const (
	// SubjectPrefix starts the subject of every event.
	SubjectPrefix = "refgc.events."
	// DeadLetterPrefix starts the subject of every dead letter.
	DeadLetterPrefix = "refgc.deadletter."
	// NoRepoToken stands for the repository of an event that names none.
	NoRepoToken = "_"
)

// Subject returns the subject an event is published on. It expects a
// validated event; for an invalid one it still returns a well-formed
// subject, never one with empty tokens or wildcards.
func Subject(e events.Event) string {
	var b strings.Builder
	b.Grow(len(SubjectPrefix) + 48)
	b.WriteString(SubjectPrefix)
	b.WriteString(kindToken(e.Kind))
	b.WriteByte('.')
	b.WriteString(repoTokens(e.Repository()))
	return b.String()
}

// SubjectFilter returns a subject filter for consumers: kind "" matches
// every kind, repo "" every repository (including events with none), and a
// repository matches exactly that repository, not the ones below it.
// Pass NoRepoToken as repo to match only events without a repository.
func SubjectFilter(kind events.Kind, repo string) string {
	k := "*"
	if kind != "" {
		k = kindToken(kind)
	}
	r := ">"
	switch {
	case repo == NoRepoToken:
		r = NoRepoToken
	case repo != "":
		r = repoTokens(repo)
	}
	return SubjectPrefix + k + "." + r
}

func kindToken(k events.Kind) string {
	if k == "" {
		return NoRepoToken
	}
	return token(strings.ReplaceAll(string(k), ".", "_"))
}

// repoTokens maps a repository name to subject tokens.
func repoTokens(repo string) string {
	if repo == "" {
		return NoRepoToken
	}
	parts := strings.Split(repo, "/")
	for i, p := range parts {
		parts[i] = token(strings.ReplaceAll(p, ".", "~"))
	}
	return strings.Join(parts, ".")
}

// token makes s a safe subject token: characters that NATS gives a meaning
// ('.', '*', '>', white space, control characters) become '_', and an
// empty token becomes NoRepoToken. Valid events never need this; it keeps a
// malformed name from producing a wildcard or an empty token.
func token(s string) string {
	if s == "" {
		return NoRepoToken
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '.' || c == '*' || c == '>' || c == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == '.' || r == '*' || r == '>' || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}

// sourceToken maps a dead letter's source to one subject token: '.' becomes
// '~' as in repositories, other characters NATS gives a meaning become '_'.
func sourceToken(s string) string {
	return token(strings.ReplaceAll(s, ".", "~"))
}
