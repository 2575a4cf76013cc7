package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
)

// ErrConfig is returned for a storage section that does not name exactly
// one driver, or whose parameters are not a map.
var ErrConfig = errors.New("store: invalid storage configuration")

// New creates the named Distribution storage driver ("filesystem", "s3",
// "gcs", "azure") with the parameters of the registry's storage section.
// The driver must be registered with Distribution's factory: the binary
// links its drivers (cmd/refgc/drivers.go), a test imports the one it uses.
func New(ctx context.Context, driverName string, params map[string]any, opts ...Option) (*Driver, error) {
	d, err := factory.Create(ctx, driverName, params)
	if err != nil {
		return nil, fmt.Errorf("store: create %s driver: %w", driverName, err)
	}
	s := FromDriver(d, opts...)
	if driverName == "filesystem" {
		s.dirs = newEmptyDirs(params, s.rmdirHook)
	}
	return s, nil
}

// sectionKeys are the keys of a registry storage section that configure
// the registry, not a driver; FromConfig ignores them as the registry does.
var sectionKeys = []string{"delete", "maintenance", "cache", "redirect", "tag"}

// FromConfig creates the driver that a registry's YAML `storage:` section
// names, taken as-is (decoded by yaml.v2 or yaml.v3: map[string]any or
// map[any]any values). The keys delete, maintenance, cache, redirect and tag
// are ignored; exactly one other key must remain, the driver's name, whose
// value holds its parameters (or is empty).
func FromConfig(ctx context.Context, section map[string]any, opts ...Option) (*Driver, error) {
	name, params, err := DriverConfig(section)
	if err != nil {
		return nil, err
	}
	return New(ctx, name, params, opts...)
}

// DriverConfig picks the driver name and its parameters out of a registry's
// storage section, as FromConfig does.
func DriverConfig(section map[string]any) (string, map[string]any, error) {
	var names []string
	for k := range section {
		if !slices.Contains(sectionKeys, k) {
			names = append(names, k)
		}
	}
	if len(names) != 1 {
		slices.Sort(names)
		return "", nil, fmt.Errorf("%w: need exactly one storage driver, got %v", ErrConfig, names)
	}
	name := names[0]
	params := map[string]any{}
	switch v := section[name].(type) {
	case nil:
	case map[string]any:
		for k, x := range v {
			params[k] = x
		}
	case map[any]any:
		for k, x := range v {
			ks, ok := k.(string)
			if !ok {
				return "", nil, fmt.Errorf("%w: %s: parameter name %v is not a string", ErrConfig, name, k)
			}
			params[ks] = x
		}
	default:
		return "", nil, fmt.Errorf("%w: %s: parameters must be a map, got %T", ErrConfig, name, v)
	}
	return name, params, nil
}
