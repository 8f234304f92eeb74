#!/usr/bin/env bash
# Side-by-side benchmark: builds release binaries, installs wrk/nginx/h2load when missing,
# runs benches/bench.py. Usage: bash benches/run.sh [--quick|--full] [--isolated] [--only S3-api]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh cmake pkg-config wrk nginx-light nghttp2-client util-linux
cargo build --release -p gateway -p backend
ulimit -n 65536 2>/dev/null || true
exec python3 benches/bench.py "$@"
