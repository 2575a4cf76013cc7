// Package schema publishes the JSON Schema of refgc's event envelope, one
// file per envelope version (v1.json, ...), and validates encoded events
// against it. The files are the contract for registries that publish
// events themselves (docs/EVENTS.md); the events package's tests check
// that its Go types, its validation and these files agree, so they cannot
// drift apart.
package schema

import (
	"bytes"
	"embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed v*.json
var files embed.FS

// Latest is the newest envelope version with a published schema.
const Latest = 1

// JSON returns the JSON Schema (draft 2020-12) of envelope version v.
func JSON(v int) ([]byte, error) {
	b, err := files.ReadFile(fmt.Sprintf("v%d.json", v))
	if err != nil {
		return nil, fmt.Errorf("schema: no schema for envelope version %d: %w", v, err)
	}
	return b, nil
}

var compiled sync.Map // int → *jsonschema.Schema

// Compile returns the compiled schema of envelope version v; formats
// (date-time) are asserted.
func Compile(v int) (*jsonschema.Schema, error) {
	if s, ok := compiled.Load(v); ok {
		return s.(*jsonschema.Schema), nil
	}
	raw, err := JSON(v)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("schema: v%d.json: %w", v, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	loc := fmt.Sprintf("v%d.json", v)
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("schema: %s: %w", loc, err)
	}
	s, err := c.Compile(loc)
	if err != nil {
		return nil, fmt.Errorf("schema: %s: %w", loc, err)
	}
	compiled.Store(v, s)
	return s, nil
}

// Validate checks one encoded event against the schema of envelope
// version v.
func Validate(v int, event []byte) error {
	s, err := Compile(v)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(event))
	if err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	if err := s.Validate(inst); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	return nil
}
