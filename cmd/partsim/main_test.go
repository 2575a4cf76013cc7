package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommandPrintsTables(t *testing.T) {
	cmd := command()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--objects", "5000", "--partitions", "2,4"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Registry:", "| repo+digest | 4 |", "largest digest partition", "Run:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	cmd = command()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"--objects", "10"})
	if err := cmd.Execute(); err == nil {
		t.Error("a registry of 10 objects was accepted")
	}
}
