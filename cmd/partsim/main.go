// Command partsim simulates a registry far larger than one machine's
// projection and reports what partitioning refgc's graph would cost: each
// partition's size, the cross-partition statements per push, the load
// skew, and what one partition's failure stalls and replays
// (docs/PARTITIONING.md). It is independent of a running refgc: the
// registry is generated statistically, repository by repository, in
// bounded memory.
package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/refgc/refgc/internal/partsim"
)

func main() {
	if err := command().Execute(); err != nil {
		os.Exit(1)
	}
}

func command() *cobra.Command {
	cfg := partsim.Defaults
	cmd := &cobra.Command{
		Use:           "partsim",
		Short:         "Simulate partitioning refgc's reference graph across machines",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			res, err := partsim.Run(cfg)
			if err != nil {
				return err
			}
			if err := partsim.WriteMarkdown(cmd.OutOrStdout(), res); err != nil {
				return err
			}
			var ru syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			fmt.Fprintf(cmd.OutOrStdout(), "\nRun: %s wall, %s CPU, peak RSS %d MiB, seed %d, GOMAXPROCS %d.\n",
				time.Since(start).Round(time.Second), time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Round(time.Second),
				ru.Maxrss/1024, cfg.Seed, runtime.GOMAXPROCS(0))
			return nil
		},
	}
	f := cmd.Flags()
	f.Int64Var(&cfg.Objects, "objects", cfg.Objects, "projection nodes (tags, revisions, layer links, blobs) to generate")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed")
	f.IntSliceVar(&cfg.Partitions, "partitions", cfg.Partitions, "partition counts to compare")
	f.Float64Var(&cfg.RepoZipfS, "repo-zipf", cfg.RepoZipfS, "exponent of the pushes-per-repository distribution")
	f.IntVar(&cfg.MaxRepoPushes, "max-repo-pushes", cfg.MaxRepoPushes, "largest repository in pushes (0: objects/500)")
	f.Float64Var(&cfg.PromoteProb, "promote", cfg.PromoteProb, "share of pushes that copy an image from another repository (mounts)")
	f.Float64Var(&cfg.PushesPerSecond, "pushes-per-second", cfg.PushesPerSecond, "registry-wide push rate for replay estimates")
	return cmd
}
