package main

// Output of the operator commands, for people and for scripts.
//
// `-o table` (or REFGC_OUTPUT=table) prints a summary and aligned tables
// with bytes and durations in human units; `-o json` prints the daemon's
// answer as indented JSON, with the field names of the HTTP API (sizes in
// bytes, durations in nanoseconds). Without -o, a terminal gets the table
// and anything else (a pipe, a file) gets JSON, as `kubectl get` and
// `crane` leave machine-readable output to pipes: a script never parses
// the table by accident. `dump` always prints JSON lines.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/reconcile"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/refcount"
)

// Output formats of -o.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// addOutputFlag adds -o/--output to the root command: its subcommands
// inherit it.
func addOutputFlag(root *cobra.Command) {
	root.PersistentFlags().StringP("output", "o", envOr("output", ""),
		"output `format`: table or json (default: table on a terminal, json otherwise)")
}

// outputFormat is the format cmd prints in.
func outputFormat(cmd *cobra.Command) (string, error) {
	f, _ := cmd.Flags().GetString("output")
	switch f {
	case outputTable, outputJSON:
		return f, nil
	case "":
		if isTerminal(cmd.OutOrStdout()) {
			return outputTable, nil
		}
		return outputJSON, nil
	}
	return "", fmt.Errorf("-o %s: want table or json", f)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// render prints v as JSON, or through table for people.
func render[T any](cmd *cobra.Command, v T, table func(w io.Writer, v T)) error {
	format, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	if format == outputJSON {
		return printJSON(cmd.OutOrStdout(), v)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	table(tw, v)
	return tw.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanBytes is n in IEC units: 1.5 MiB.
func humanBytes(n int64) string {
	if n < 0 {
		return "-" + humanize.IBytes(uint64(-n))
	}
	return humanize.IBytes(uint64(n))
}

// humanDuration rounds d to what a person reads: 1.2s, 340ms, 2m0s.
func humanDuration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.String()
}

// humanTime is t in UTC to the second, with how long ago or ahead it is.
func humanTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.DateTime) + " UTC (" + humanize.Time(*t) + ")"
}

func collectTable(w io.Writer, r collector.Report, dry bool) {
	verb := ""
	if dry {
		verb = "would be "
	}
	fmt.Fprintf(w, "unlinked %s\t%d\t%s\t(restorable until purged)\n", verb, r.Unlinked, humanBytes(r.UnlinkedBytes))
	fmt.Fprintf(w, "purged %s\t%d\t%s\t(space freed)\n", verb, r.Purged, humanBytes(r.PurgedBytes))
	for _, c := range []struct {
		what string
		n    int
	}{{"refused by the storage check", r.Refused}, {"undone (raced with a push)", r.Restored},
		{"healed", r.Healed}, {"lost", r.Lost}, {"storage errors", r.Errors}} {
		if c.n > 0 {
			fmt.Fprintf(w, "%s\t%d\t\t\n", c.what, c.n)
		}
	}
	if r.View != nil && len(r.View.Paused) > 0 {
		for _, p := range r.View.Paused {
			repo := p.Repo
			if repo == "" {
				repo = "(whole registry)"
			}
			fmt.Fprintf(w, "paused\t%s\t%s\t\n", repo, p.Reason)
		}
	}
	fmt.Fprintf(w, "took\t%s\t\t\n", humanDuration(r.Duration))
	if len(r.Removed) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "ACTION\tKIND\tOBJECT\tSIZE")
		for i, rm := range r.Removed {
			if i == 50 {
				fmt.Fprintf(w, "…\t\t%d more (-o json lists them all)\t\n", len(r.Removed)-50)
				break
			}
			act := "unlink"
			if rm.Purge {
				act = "purge"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", act, rm.Node.Kind, rm.Node, humanBytes(rm.Bytes))
		}
	}
}

func restoreTable(w io.Writer, r collector.Restored) {
	fmt.Fprintf(w, "restored\t%s\n", r.Manifest)
	fmt.Fprintf(w, "layer links\t%d\n", r.Layers)
	if r.Children > 0 {
		fmt.Fprintf(w, "child manifests\t%d\n", r.Children)
	}
	if len(r.Tags) > 0 {
		fmt.Fprintf(w, "tags\t%s\n", strings.Join(r.Tags, ", "))
	}
}

func whyTable(w io.Writer, y refcount.Why) {
	fmt.Fprintf(w, "object\t%s\n", y.Node)
	fmt.Fprintf(w, "present in storage\t%v\n", y.Present)
	switch {
	case len(y.Chain) > 0:
		fmt.Fprintf(w, "kept by\t%s\n", y.Root)
		for i, h := range y.Chain {
			fmt.Fprintf(w, "%s\t%s (%s)\n", strings.Repeat("  ", i)+"└─", h.Node, h.Edge)
		}
	case y.Lease != nil:
		fmt.Fprintf(w, "kept by\tits lease (a recent push, mount or pull)\n")
	default:
		fmt.Fprintf(w, "kept by\tnothing\n")
	}
	if y.Lease != nil {
		fmt.Fprintf(w, "lease ends\t%s\n", humanTime(y.Lease))
	}
	if y.Eligible != nil {
		fmt.Fprintf(w, "collectable from\t%s\n", humanTime(y.Eligible))
	}
}

func impactTable(w io.Writer, im refcount.Impact) {
	fmt.Fprintf(w, "would free\t%s\tin %d objects (once collected)\n", humanBytes(im.Bytes), im.Nodes)
	if len(im.Deleted) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "KIND\tOBJECT\t")
		for _, n := range im.Deleted {
			fmt.Fprintf(w, "%s\t%s\t\n", n.Kind, n)
		}
	}
}

func usageTable(w io.Writer, us []refcount.RepoUsage) {
	fmt.Fprintln(w, "REPOSITORY\tTAGS\tMANIFESTS\tLAYERS\tLINKED\tONLY HERE\tAWAITING COLLECTION")
	for _, u := range us {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%s\t%s\n", u.Repo, u.Tags, u.Manifests, u.Layers,
			humanBytes(u.Bytes), humanBytes(u.UniqueBytes), humanBytes(u.Reclaimable))
	}
}

func deadLettersTable(w io.Writer, dls []eventlog.StoredDeadLetter) {
	if len(dls) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	fmt.Fprintln(w, "SEQ\tTIME\tSOURCE\tREASON\tDETAIL")
	for _, d := range dls {
		detail := d.Detail
		if len(detail) > 100 {
			detail = detail[:100] + "…"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", d.Seq, d.Time.UTC().Format(time.DateTime), d.Source, d.Reason, detail)
	}
	fmt.Fprintln(w, "\n(-o json shows the bodies)")
}

func driftTable(w io.Writer, d reconcile.Drift) {
	if d.Clean() {
		fmt.Fprintf(w, "storage and the projection agree\t(as of event %d, %s)\n", d.AsOf, humanDuration(d.Duration))
	} else {
		fmt.Fprintf(w, "storage and the projection differ\t(as of event %d, %s)\n", d.AsOf, humanDuration(d.Duration))
		fmt.Fprintln(w)
		fmt.Fprintln(w, "DRIFT\tCOUNT\tEXAMPLE")
		for _, typ := range reconcile.DriftTypes {
			if n := d.Counts[typ]; n > 0 {
				ex := ""
				if e := d.Examples[typ]; len(e) > 0 {
					ex = e[0]
				}
				fmt.Fprintf(w, "%s\t%d\t%s\n", typ, n, ex)
			}
		}
	}
	if d.Published > 0 || d.Healed > 0 {
		fmt.Fprintf(w, "corrections published\t%d\t(links healed: %d)\n", d.Published, d.Healed)
	}
	fmt.Fprintf(w, "scanned\t%s\t\n", scannedText(d.Scanned))
}

func scannedText(m map[string]int) string {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func rebuildTable(w io.Writer, r reconcile.RebuildReport) {
	from := "replayed from the event log (sequence 1 to " + fmt.Sprint(r.Cursor) + ")"
	if r.From == "storage" {
		from = "walked from storage (" + scannedText(r.Scanned) + ")"
	}
	fmt.Fprintf(w, "rebuilt\t%s\n", r.Path)
	fmt.Fprintf(w, "from\t%s\n", from)
	fmt.Fprintf(w, "nodes\t%d\n", r.Nodes)
	if r.Differences == 0 {
		fmt.Fprintf(w, "compared with the live projection\tthe same\n")
	} else {
		fmt.Fprintf(w, "compared with the live projection\t%d nodes differ\n", r.Differences)
		for _, ex := range r.Examples {
			fmt.Fprintf(w, "\t%s\n", ex)
		}
	}
	if r.TimingDifferences > 0 {
		fmt.Fprintf(w, "lease or eligibility times only\t%d nodes (the grace changed since their events; no difference)\n", r.TimingDifferences)
	}
	fmt.Fprintf(w, "took\t%s\n", humanDuration(r.Duration))
}

// refArg parses a reference given on the command line, with an error in
// the terms the user typed it in.
func refArg(s string) (events.NodeRef, error) {
	ref, err := events.ParseRef(s)
	if err == nil {
		return ref, nil
	}
	why := err.Error()
	if i := strings.Index(why, "node."); i >= 0 {
		if j := strings.Index(why[i:], ": "); j >= 0 {
			why = why[i+j+2:]
		}
	} else {
		why = "no tag, digest or kind"
	}
	hint := ""
	if strings.Contains(why, "repository name") {
		hint = " (repository names are lower case: a-z, 0-9 and the separators . _ - /)"
	}
	return ref, fmt.Errorf("%q is not a reference: %s%s; write repo:tag, repo@sha256:<64 hex digits>, "+
		"layer:repo@sha256:<64 hex digits> or blob:sha256:<64 hex digits>", s, why, hint)
}
