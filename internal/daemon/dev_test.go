package daemon_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

func TestDev(t *testing.T) {
	dev, err := daemon.StartDev(context.Background(), daemon.DevConfig{
		DataDir: t.TempDir(), RegistryAddr: "127.0.0.1:0", Addr: "127.0.0.1:0", NATSListen: "127.0.0.1:-1",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
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
}
