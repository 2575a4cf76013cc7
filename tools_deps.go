//go:build tools

package refgc

import (
	_ "github.com/compose-spec/compose-go/v2/loader"
	_ "github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/opencontainers/go-digest"
	_ "github.com/opencontainers/image-spec/specs-go/v1"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
)
