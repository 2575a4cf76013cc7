package eventlog_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

func TestReadDeadLetters(t *testing.T) {
	_, js, _ := setup(t)
	ctx := ctxT(t, 10*time.Second)
	if got, err := eventlog.ReadDeadLetters(ctx, js, "", 10); err != nil || len(got) != 0 {
		t.Fatalf("empty stream: %v %v", got, err)
	}
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	for i := range 5 {
		if err := pub.DeadLetter(ctx, eventlog.DeadLetter{ID: fmt.Sprint("dl-", i), Source: "reg", Reason: "invalid_event",
			Detail: fmt.Sprint("detail ", i), Body: []byte(fmt.Sprint("body ", i))}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := eventlog.ReadDeadLetters(ctx, js, "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != "dl-2" || got[2].ID != "dl-4" {
		t.Fatalf("newest three, oldest first: %+v", got)
	}
	if d := got[2]; d.Reason != "invalid_event" || d.Detail != "detail 4" || d.Body != "body 4" || d.Source != "reg" || d.Time.IsZero() {
		t.Fatalf("dead letter: %+v", d)
	}
}
