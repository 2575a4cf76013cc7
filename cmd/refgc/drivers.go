package main

import (
	// The storage drivers a registry's storage section can name. The binary
	// registers them; the store package links none.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// drivers names the storage drivers this binary links.
var drivers = []string{"azure", "filesystem", "gcs", "s3"}
