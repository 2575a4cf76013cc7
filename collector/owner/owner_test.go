package owner_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/jstest"
)

func TestClientAndService(t *testing.T) {
	js, _ := jstest.Start(t)
	nc := js.Conn()
	label := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "lbl1"}
	blob := events.NodeRef{Kind: events.NodeBlob, Digest: digest.FromString("b")}
	var handler owner.Handler
	svc, err := owner.AddService(nc, owner.ServiceConfig{Source: "quay", Handler: func(ctx context.Context, req owner.Request) (owner.Response, error) {
		return handler(ctx, req)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	client, err := owner.NewClient(nc, "quay", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	items := []owner.Item{{Intent: "i1", Node: label}, {Intent: "i2", Node: blob}}
	attached := events.Event{Time: time.Now(), Source: "quay", Kind: events.LabelAttached,
		Label: &events.Label{Repo: "app", Digest: digest.FromString("m"), ID: "lbl1"}}
	tests := []struct {
		name    string
		handler owner.Handler
		want    []owner.Status
		err     error
	}{
		{"answers by item", func(_ context.Context, req owner.Request) (owner.Response, error) {
			return owner.Response{Results: []owner.Result{
				{Intent: "i2", Status: owner.StatusDeleted},
				{Intent: "i1", Status: owner.StatusInUse, Reason: "manifest_label", Statements: []events.Event{attached}},
			}}, nil
		}, []owner.Status{owner.StatusDeleted, owner.StatusInUse}, nil},
		{"an answer to an item not asked", func(context.Context, owner.Request) (owner.Response, error) {
			return owner.Response{Results: []owner.Result{{Intent: "zz", Status: owner.StatusDeleted}}}, nil
		}, nil, owner.ErrProtocol},
		{"an item answered twice", func(context.Context, owner.Request) (owner.Response, error) {
			return owner.Response{Results: []owner.Result{{Intent: "i1", Status: owner.StatusDeleted}, {Intent: "i1", Status: owner.StatusAbsent}}}, nil
		}, nil, owner.ErrProtocol},
		{"an unknown status", func(context.Context, owner.Request) (owner.Response, error) {
			return owner.Response{Results: []owner.Result{{Intent: "i1", Status: "gone"}}}, nil
		}, nil, owner.ErrProtocol},
		{"an invalid statement", func(context.Context, owner.Request) (owner.Response, error) {
			bad := attached
			bad.Label = nil
			return owner.Response{Results: []owner.Result{{Intent: "i1", Status: owner.StatusInUse, Statements: []events.Event{bad}}}}, nil
		}, nil, owner.ErrProtocol},
		{"a handler error", func(context.Context, owner.Request) (owner.Response, error) {
			return owner.Response{}, errors.New("database locked")
		}, nil, owner.ErrOwner},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			handler = tc.handler
			res, err := client.Delete(context.Background(), items)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]owner.Status{}
			for _, r := range res {
				got[r.Intent] = r.Status
			}
			if got["i1"] != tc.want[1] || got["i2"] != tc.want[0] {
				t.Fatalf("results %+v", res)
			}
		})
	}
	t.Run("another source's request is refused", func(t *testing.T) {
		other, err := owner.NewClient(nc, "elsewhere", client.Subject(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.Delete(context.Background(), items); !errors.Is(err, owner.ErrOwner) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("no owner listening", func(t *testing.T) {
		none, err := owner.NewClient(nc, "nobody", "", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := none.Delete(context.Background(), items); err == nil {
			t.Fatal("no error without an owner")
		}
	})
}

func TestRequestValidate(t *testing.T) {
	node := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "l"}
	tests := []struct {
		name string
		req  owner.Request
		ok   bool
	}{
		{"valid", owner.Request{V: 1, Source: "q", Items: []owner.Item{{Intent: "a", Node: node}}}, true},
		{"newer version", owner.Request{V: 2, Source: "q", Items: []owner.Item{{Intent: "a", Node: node}}}, false},
		{"no items", owner.Request{V: 1, Source: "q"}, false},
		{"repeated intent", owner.Request{V: 1, Source: "q", Items: []owner.Item{{Intent: "a", Node: node}, {Intent: "a", Node: node}}}, false},
		{"bad node", owner.Request{V: 1, Source: "q", Items: []owner.Item{{Intent: "a", Node: events.NodeRef{Kind: events.NodeLabel, Repo: "../x", Name: "l"}}}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.req.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
	if got := owner.DefaultSubject("quay.io prod"); got != "refgc.owner.quay_io_prod.delete" {
		t.Fatalf("DefaultSubject: %s", got)
	}
}

func TestRestoreEndpoint(t *testing.T) {
	js, _ := jstest.Start(t)
	nc := js.Conn()
	tag := events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "v1"}
	set := events.Event{Time: time.Now(), Source: "quay", Kind: events.TagSet,
		Tag: &events.Tag{Repo: "app", Name: "v1", Digest: digest.FromString("m")}}
	var answer owner.Status
	svc, err := owner.AddService(nc, owner.ServiceConfig{Source: "quay", Subject: "quay.gc.delete",
		Handler: func(context.Context, owner.Request) (owner.Response, error) { return owner.Response{}, nil },
		Restore: func(_ context.Context, req owner.Request) (owner.Response, error) {
			r := owner.Result{Intent: req.Items[0].Intent, Status: answer}
			if answer == owner.StatusRestored {
				r.Statements = []events.Event{set}
			}
			return owner.Response{Results: []owner.Result{r}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	client, err := owner.NewClient(nc, "quay", "quay.gc.delete", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := owner.RestoreSubject("quay.gc.delete"); got != "quay.gc.restore" {
		t.Fatalf("RestoreSubject: %s", got)
	}
	items := []owner.Item{{Intent: "r1", Node: tag}}
	tests := []struct {
		name   string
		answer owner.Status
		items  []owner.Item
		err    error
	}{
		{"restored, with its tag.set", owner.StatusRestored, items, nil},
		{"nothing to restore", owner.StatusAbsent, items, nil},
		{"a deletion's answer breaks the contract", owner.StatusDeleted, items, owner.ErrProtocol},
		{"only tags are restored", owner.StatusRestored, []owner.Item{{Intent: "r2", Node: events.NodeRef{Kind: events.NodeBlob,
			Digest: digest.FromString("b")}}}, owner.ErrNotTag},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			answer = tc.answer
			res, err := client.Restore(context.Background(), tc.items)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || len(res) != 1 || res[0].Status != tc.answer {
				t.Fatalf("results %+v %v", res, err)
			}
		})
	}
	t.Run("a service without restores answers no responders", func(t *testing.T) {
		plain, err := owner.AddService(nc, owner.ServiceConfig{Source: "plain",
			Handler: func(context.Context, owner.Request) (owner.Response, error) { return owner.Response{}, nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = plain.Stop() })
		c, _ := owner.NewClient(nc, "plain", "", time.Second)
		if _, err := c.Restore(context.Background(), items); err == nil {
			t.Fatal("a restore without a restore endpoint succeeded")
		}
	})
}
