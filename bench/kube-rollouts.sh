#!/usr/bin/env bash
# `cutover controller` with many Rollouts: resident memory per Rollout and reconcile throughput,
# with the Rollouts fed through a scripted watch stream and a scripted API server
# (crates/kube/examples/bench_rollouts.rs). Results: bench/results/kube-<UTC date-time>.json.
# See BENCHMARKS.md ("Kubernetes controller").
#
# Knobs (env): N=10000 PROFILE=dev (or release: fat LTO, several minutes more to build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10000}
PROFILE=${PROFILE:-dev}
args=()
[[ $PROFILE == release ]] && args+=(--release)
cd "$ROOT"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build -q -p cutover-kube --example bench_rollouts "${args[@]}"
dir=debug
[[ $PROFILE == release ]] && dir=release
mkdir -p bench/results
out="bench/results/kube-$(date -u +%Y%m%dT%H%M%SZ).json"
"target/$dir/examples/bench_rollouts" "$N" | tee "$out"
