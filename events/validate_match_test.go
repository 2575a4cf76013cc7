package events

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestMatchersAgreeWithRegexps holds the hand-written matchers equal to
// the regular expressions that define them, and the digest fast path equal
// to go-digest, on random strings over the alphabets that matter.
func TestMatchersAgreeWithRegexps(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 13))
	gen := func(alphabet string, maxLen int) string {
		n := rng.IntN(maxLen + 1)
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	cases := []struct {
		name     string
		alphabet string
		maxLen   int
		hand     func(string) bool
		re       func(string) bool
	}{
		{"repo", "ab0._-/_A:", 12, matchRepo, repoRE.MatchString},
		{"tag", "aZ9_.-:/", 140, matchTag, tagRE.MatchString},
		{"id", "aZ9_.:=-/ ", 270, matchID, idRE.MatchString},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for range 200_000 {
				s := gen(c.alphabet, c.maxLen)
				if c.hand(s) != c.re(s) {
					t.Fatalf("%q: hand-written %v, regexp %v", s, c.hand(s), c.re(s))
				}
			}
		})
	}
	t.Run("digest", func(t *testing.T) {
		good := string(digest.FromString("x"))
		seeds := []string{good, string(digest.SHA384.FromString("x")), string(digest.SHA512.FromString("x")),
			"sha256:", "sha256", "md5:" + good[7:], "SHA256:" + good[7:], "sha256:" + strings.ToUpper(good[7:])}
		for range 100_000 {
			s := []byte(seeds[rng.IntN(len(seeds))])
			for range rng.IntN(3) {
				switch op := rng.IntN(3); {
				case op == 0 && len(s) > 0:
					s[rng.IntN(len(s))] = "0aFg:-"[rng.IntN(6)]
				case op == 1 && len(s) > 0:
					s = s[:rng.IntN(len(s))]
				default:
					s = append(s, "0af"[rng.IntN(3)])
				}
			}
			_, err := digest.Parse(string(s))
			if fast := canonicalDigest(string(s)); fast && err != nil {
				t.Fatalf("%q: fast path accepts what go-digest refuses: %v", s, err)
			}
			if got, want := ValidateDigest(digest.Digest(s)) == nil, err == nil && len(s) > 0; got != want {
				t.Fatalf("%q: ValidateDigest ok=%v, go-digest ok=%v", s, got, want)
			}
		}
	})
}
