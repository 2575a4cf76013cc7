package partsim

import (
	"fmt"
	"io"
	"strings"

	"github.com/dustin/go-humanize"
)

func num(v float64) string {
	if v < 1000 {
		return fmt.Sprintf("%.0f", v)
	}
	n, unit := humanize.ComputeSI(v)
	return fmt.Sprintf("%.3g %s", n, unit)
}

func byteSize(v float64) string { return humanize.IBytes(uint64(v)) }

func pct(v float64) string { return fmt.Sprintf("%.1f %%", v*100) }

// WriteMarkdown writes the result as the tables of docs/PARTITIONING.md.
func WriteMarkdown(w io.Writer, r *Result) error {
	var b strings.Builder
	t := r.Totals
	c := r.Config
	fmt.Fprintf(&b, "Registry: %s objects (%s tags, %s revisions, %s layer links, %s blobs) in %s repositories, from %s pushes; "+
		"largest repository %s objects (%s); one projection of it all: %s (keys, values and leaf headers).\n\n",
		num(float64(t.Objects())), num(float64(t.Tags)), num(float64(t.Manifests)), num(float64(t.Links)), num(float64(t.Blobs)),
		num(float64(t.Repos)), num(float64(t.Pushes)), num(float64(t.LargestRepoObjects)),
		pct(float64(t.LargestRepoObjects)/float64(t.Objects())), byteSize(float64(r.Bytes)))
	fmt.Fprintf(&b, "Per push: %.2f events to its repository partition, %.2f statements to digest partitions (%.2f of them add an edge).\n\n",
		float64(t.RepoEvents)/float64(t.Pushes), float64(t.Statements)/float64(t.Pushes), float64(t.EdgeWrites)/float64(t.Pushes))

	b.WriteString("Size per partition (mean / max, and max ÷ mean):\n\n")
	b.WriteString("| scheme | N | repository partition objects | its bytes | events skew | digest partition objects | its bytes | one machine (repo i + digest i): bytes max | blob copies |\n")
	b.WriteString("|---|---:|---|---|---:|---|---|---|---:|\n")
	for _, s := range r.Schemes {
		dig, digB := "–", "–"
		if s.Scheme != SchemeRepo {
			dig = fmt.Sprintf("%s / %s (%.2f)", num(s.DigestObjects.Mean), num(s.DigestObjects.Max), s.DigestObjects.Skew())
			digB = fmt.Sprintf("%s / %s", byteSize(s.DigestBytes.Mean), byteSize(s.DigestBytes.Max))
		}
		fmt.Fprintf(&b, "| %s | %d | %s / %s (%.2f) | %s / %s (%.2f) | %.2f | %s | %s | %s (%.2f) | %.3f |\n",
			s.Scheme, s.N, num(s.RepoObjects.Mean), num(s.RepoObjects.Max), s.RepoObjects.Skew(),
			byteSize(s.RepoBytes.Mean), byteSize(s.RepoBytes.Max), s.RepoBytes.Skew(), s.RepoEvents.Skew(),
			dig, digB, byteSize(s.MachineBytes.Max), s.MachineBytes.Skew(), s.BlobCopies)
	}

	b.WriteString("\nCross-partition traffic:\n\n")
	b.WriteString("| scheme | N | statements per push | edge writes per push | digest partitions per push (mean, p99) | statements leaving their machine | digest partition skew: statements, writes | partitions a purge round asks |\n")
	b.WriteString("|---|---:|---:|---:|---|---:|---|---:|\n")
	for _, s := range r.Schemes {
		if s.Scheme == SchemeRepo {
			fmt.Fprintf(&b, "| %s | %d | 0 | 0 | – | – | – | %d |\n", s.Scheme, s.N, s.PurgeAsks)
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %.2f | %.2f | %.2f, %d | %s | %.2f, %.2f | %d |\n", s.Scheme, s.N, s.StatementsPerPush,
			s.WritesPerPush, s.DistinctPerPush, s.DistinctP99, pct(s.OffMachine), s.DigestStatements.Skew(),
			s.DigestWrites.Skew(), s.PurgeAsks)
	}

	fmt.Fprintf(&b, "\nA partition's failure (replay at %s pushes/s registry-wide):\n\n", num(c.PushesPerSecond))
	b.WriteString("| scheme | N | partition lost | objects whose collection stalls | share of the registry | events to replay per hour of log | objects a rebuild re-reads |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|\n")
	for _, s := range r.Schemes {
		for _, f := range s.Failures {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s |\n", s.Scheme, s.N, f.Partition, num(float64(f.Stalled)),
				pct(float64(f.Stalled)/float64(t.Objects())), num(f.ReplayPerHour), num(float64(f.Rebuild)))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
