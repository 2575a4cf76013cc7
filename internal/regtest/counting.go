package regtest

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// CountingDriver counts the storage operations that reach a driver: every
// call of the StorageDriver interface, and every List and Stat of a walk
// (walks go through storagedriver.WalkFallback over this driver, so a walk
// costs what it lists and stats, as it does on an object store).
type CountingDriver struct {
	storagedriver.StorageDriver
	Ops atomic.Int64
}

// GetContent counts one operation.
func (c *CountingDriver) GetContent(ctx context.Context, p string) ([]byte, error) {
	c.Ops.Add(1)
	return c.StorageDriver.GetContent(ctx, p)
}

// PutContent counts one operation.
func (c *CountingDriver) PutContent(ctx context.Context, p string, b []byte) error {
	c.Ops.Add(1)
	return c.StorageDriver.PutContent(ctx, p, b)
}

// Reader counts one operation.
func (c *CountingDriver) Reader(ctx context.Context, p string, off int64) (io.ReadCloser, error) {
	c.Ops.Add(1)
	return c.StorageDriver.Reader(ctx, p, off)
}

// Writer counts one operation.
func (c *CountingDriver) Writer(ctx context.Context, p string, a bool) (storagedriver.FileWriter, error) {
	c.Ops.Add(1)
	return c.StorageDriver.Writer(ctx, p, a)
}

// Stat counts one operation.
func (c *CountingDriver) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	c.Ops.Add(1)
	return c.StorageDriver.Stat(ctx, p)
}

// List counts one operation.
func (c *CountingDriver) List(ctx context.Context, p string) ([]string, error) {
	c.Ops.Add(1)
	return c.StorageDriver.List(ctx, p)
}

// Move counts one operation.
func (c *CountingDriver) Move(ctx context.Context, a, b string) error {
	c.Ops.Add(1)
	return c.StorageDriver.Move(ctx, a, b)
}

// Delete counts one operation.
func (c *CountingDriver) Delete(ctx context.Context, p string) error {
	c.Ops.Add(1)
	return c.StorageDriver.Delete(ctx, p)
}

// RedirectURL counts one operation.
func (c *CountingDriver) RedirectURL(r *http.Request, p string) (string, error) {
	c.Ops.Add(1)
	return c.StorageDriver.RedirectURL(r, p)
}

// Walk lists and stats through c, counting each.
func (c *CountingDriver) Walk(ctx context.Context, p string, f storagedriver.WalkFn, o ...func(*storagedriver.WalkOptions)) error {
	return storagedriver.WalkFallback(ctx, c, p, f, o...)
}
