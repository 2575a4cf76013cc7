package daemon_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

func TestDev(t *testing.T) {
	dc := daemon.DevDefaults()
	dc.DataDir, dc.RegistryAddr, dc.Addr, dc.NATS.Listen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:-1"
	dc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	dev, err := daemon.StartDev(context.Background(), dc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	ref, err := name.ParseReference(dev.RegistryHost+"/demo:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, regtest.RandomImage(t, 1)); err != nil {
		t.Fatal(err)
	}
	regtest.WaitFor(t, "demo:v1 in the projection", func() bool {
		_, ok, err := dev.Projection().Get(events.NodeRef{Kind: events.NodeTag, Repo: "demo", Name: "v1"})
		return err == nil && ok
	})
	resp, err := http.Post(dev.URL()+daemon.CollectPath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("collect: %d", resp.StatusCode)
	}
	if _, err := remote.Image(ref); err != nil {
		t.Fatal(err)
	}
	// The catalog pages as a client asks (crane catalog), which needs the
	// registry's default page limit set.
	reg, err := name.NewRegistry(dev.RegistryHost, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	repos, err := remote.Catalog(context.Background(), reg)
	if err != nil || !slices.Equal(repos, []string{"demo"}) {
		t.Fatalf("catalog: %v %v", repos, err)
	}
	if dev.WebhookToken == "" {
		t.Error("dev: no webhook token to show")
	}
}
