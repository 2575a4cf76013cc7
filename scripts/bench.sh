#!/usr/bin/env bash
# Runs every benchmark quoted in docs/BENCHMARKS.md, one after the other
# (never in parallel: they compete for the same two cores and disk).
# Usage: scripts/bench.sh [pattern]   e.g. scripts/bench.sh refcount
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-}
run() { # name, command...
  local name=$1; shift
  if [ -n "$only" ] && [[ $name != *"$only"* ]]; then return; fi
  echo "== $name: $*"; uptime
  "$@" 2>&1 | grep -E '^(Benchmark|ok|FAIL)|ns/op|operations in|unavailability|s3_bench_test' || true
}
run refcount      go test ./refcount -run '^$' -bench 'Apply|RawPuts' -benchtime 24x -count 3
run applywarm     go test ./refcount -run '^$' -bench '^Benchmark(Apply|RawPuts)$/batch=(1000|16000|32000)$' -benchtime 8x -count 2 -args -apply.warm
run applylarge    go test ./refcount -run '^$' -bench '^Benchmark(Apply|RawPuts)$/batch=16000$' -benchtime 24x -count 2 -args -apply.warm
run eventlog      go test ./events/eventlog -run '^$' -bench BenchmarkEventLog -benchtime 100000x -count 3
run latency       go test ./events/eventlog -run '^$' -bench BenchmarkLatency -benchtime 5000x -count 3
run catchup       go test ./events/eventlog -run '^$' -bench BenchmarkCatchUp -benchtime 2000x
run pulls         go test ./events/eventlog -run '^$' -bench BenchmarkPulls -benchtime 5000x -count 3
run pullse2e      go test ./internal/daemon -run '^$' -bench BenchmarkPullsE2E -benchtime 5000x -count 2
run stats         go test ./refcount -run '^$' -bench BenchmarkStats -count 3
run webhook       go test ./events/distribution -run '^$' -bench BenchmarkWebhook -benchtime 2s -count 3
run e2e           go test ./internal/daemon -run '^$' -bench BenchmarkWebhookE2E -benchtime 5000x -count 3
run collector     go test ./collector -run '^$' -bench BenchmarkCollectorDeletes -benchtime 3x -timeout 60m
run collectorpaired go test ./collector -run '^$' -bench 'BenchmarkCollectorDeletes/paired' -benchtime 2x -timeout 60m
run store         go test ./store -run '^$' -bench . -benchtime 2s -count 5
run reconcile     go test ./collector -run '^$' -bench BenchmarkReconcilePass -benchtime 3x
run reclaim       go test ./collector -run '^$' -bench BenchmarkReclaimOne -benchtime 1x -count 2 -timeout 60m
run random        go test ./collector -run 'TestRandomDirect|TestRandomRegistry' -collector.ops=10000 -timeout 60m -v
run s3            go test ./collector -run '^$' -bench BenchmarkS3Requests -benchtime 1x -timeout 120m -v -args -s3bench.manifests=2000,20000 -s3bench.untagged=false
run s3untagged    go test ./collector -run '^$' -bench BenchmarkS3Requests -benchtime 1x -timeout 120m -v -args -s3bench.manifests=2000
run snapshot      go test ./events/eventlog -run '^$' -bench BenchmarkSnapshot -benchtime 1x -timeout 60m -args -snapshot.events=800000
