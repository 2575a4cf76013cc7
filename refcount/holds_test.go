package refcount

import "testing"

func TestHoldsRepository(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushB("app", "l1"), pushM("app", "m1", "v1", []string{"l1"}, nil, ""), pushB("app/sub", "l2"))
	holds := func(repo string) bool {
		t.Helper()
		held, err := f.p.HoldsRepository(repo)
		if err != nil {
			t.Fatal(err)
		}
		return held
	}
	for _, tc := range []struct {
		repo string
		want bool
	}{{"app", true}, {"app/sub", true}, {"ap", false}, {"app/su", false}, {"other", false}} {
		t.Run(tc.repo, func(t *testing.T) {
			if got := holds(tc.repo); got != tc.want {
				t.Errorf("HoldsRepository(%q) = %v, want %v", tc.repo, got, tc.want)
			}
		})
	}
}
