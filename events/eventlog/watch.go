package eventlog

import (
	"context"
	"errors"
	"fmt"
)

// ErrWatchClosed is returned by InitialValues when a watcher's updates end
// before the marker that ends its initial values: its subscription closed
// (the connection closed, or its ordered consumer could not be reset), and
// the values it gave are not the whole bucket.
var ErrWatchClosed = errors.New("events: watcher closed before its initial values ended")

// InitialValues reads a JetStream key-value or object-store watcher's
// initial values: everything up to the nil marker that ends them. nats.go's
// own listings (KeyValue.ListKeys, ObjectStore.List) take a closed updates
// channel for that marker, and so a listing cut short for the whole list;
// and they wait with no deadline but the context's. Here a closed channel
// is ErrWatchClosed, and the context's end is its error: a list is
// returned only whole.
func InitialValues[T comparable](ctx context.Context, updates <-chan T) ([]T, error) {
	var zero T
	var out []T
	for {
		select {
		case v, ok := <-updates:
			if !ok {
				return nil, ErrWatchClosed
			}
			if v == zero {
				return out, nil
			}
			out = append(out, v)
		case <-ctx.Done():
			return nil, fmt.Errorf("events: watcher's initial values: %w", ctx.Err())
		}
	}
}
