#!/usr/bin/env bash
# Due-based runs (issue 19) on a fake clock: 50 clients over 14 days, hourly `run --due` against a
# nightly `run` at 02:00, no SSH. The simulation (borg-pull-fleet/examples/schedule-sim.rs) calls
# the selection `run --due` calls (borg_pull_fleet::run::select_due) and records every attempt as
# `run` does (ClientState::record_attempt); the clients come from a config parsed by the fleet's
# parser. Deterministic for a seed: the machine's load changes nothing but the time it takes.
#
#   bash benches/schedule-sim.sh [SEED]     # seed 19 by default
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-19}
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with changes)'); $(rustc --version)"
echo "# cargo run -q -p borg-pull-fleet --example schedule-sim -- $SEED"
echo
cargo run -q -p borg-pull-fleet --example schedule-sim -- "$SEED"
