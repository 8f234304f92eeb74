#!/usr/bin/env bash
# Side-by-side benchmark: builds release binaries, installs wrk/nginx/h2load when missing,
# runs benches/bench.py, then draws PNG charts of the run (benches/chart, plotters).
# Usage: bash benches/run.sh [--quick|--full] [--isolated] [--only S3-api]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh cmake pkg-config wrk nginx-light nghttp2-client util-linux fonts-dejavu-core
command -v oha >/dev/null || cargo install --locked oha  # fixed-rate tail latency
# The same command as scripts/up.sh, so a bench after `up` reuses its release binaries (a
# package added to this command would change shared dependencies' features and rebuild all).
cargo build --release -p gateway -p backend
cargo build --release -p bench-chart
# The REF-pingora-fixed floor and the REF-floor-* proxies (the #23 spike).
cargo build --release -p gateway --example fixed_response --example proxy_floor
ulimit -n 65536 2>/dev/null || true
python3 benches/bench.py "$@"
latest=$(ls -t benches/results/*.json | head -1)
target/release/bench-chart "$latest"
