package main

import (
	"net/url"
	"testing"
)

func TestRestoreQuery(t *testing.T) {
	d := "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
	for _, tc := range []struct {
		arg  string
		want url.Values
	}{
		{"team/app@" + d, url.Values{"repo": {"team/app"}, "digest": {d}}},
		{"team/app:v1", url.Values{"repo": {"team/app"}, "tag": {"v1"}}},
		{"localhost/app:v1.2", url.Values{"repo": {"localhost/app"}, "tag": {"v1.2"}}},
		{"app", nil},
		{"@" + d, nil},
		{"../etc:x", nil},
	} {
		t.Run(tc.arg, func(t *testing.T) {
			got, err := restoreQuery(tc.arg)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted: %v", got)
				}
				return
			}
			if err != nil || got.Encode() != tc.want.Encode() {
				t.Fatalf("got %v %v, want %v", got, err, tc.want)
			}
		})
	}
}
