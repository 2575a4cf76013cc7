package main

import (
	"context"
	"errors"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/factory"

	"github.com/refgc/refgc/store"
)

// TestDriversLinked checks every cloud driver is registered with the
// factory: creating one with empty parameters fails on its parameters, not
// for want of a registered driver.
func TestDriversLinked(t *testing.T) {
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			_, err := store.New(context.Background(), name, map[string]any{})
			var unregistered factory.InvalidStorageDriverError
			if errors.As(err, &unregistered) {
				t.Fatalf("driver %s not linked: %v", name, err)
			}
		})
	}
}
