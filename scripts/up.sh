#!/usr/bin/env bash
# One command for the whole local stack: build, dev certificates and keys on first run,
# backend + gateway with conf/gateway.toml, wait until ready, stop both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh cmake pkg-config
cargo build --release -p gateway -p backend
./target/release/gateway certs dev --dir certs/dev
./target/release/gateway check -c conf/gateway.toml

mkdir -p data
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping…"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

AUTH_MODE=gateway IDENTITY_KEY_FILE=certs/dev/identity.key ./target/release/backend --listen 127.0.0.1:8000 --db data/backend.db --keys-dir data/keys \
  >data/backend.log 2>&1 &
pids+=($!)
./target/release/gateway run -c conf/gateway.toml >data/gateway.log 2>&1 &
pids+=($!)

ready() { curl -fsS -o /dev/null "$1" 2>/dev/null; }
for _ in $(seq 1 100); do
  if ready http://127.0.0.1:8000/readyz && ready http://127.0.0.1:9901/readyz; then break; fi
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a process exited; see data/*.log" >&2; tail -n 20 data/*.log >&2; exit 1; }
  done
  sleep 0.2
done
ready http://127.0.0.1:9901/readyz || { echo "gateway not ready; see data/gateway.log" >&2; exit 1; }

cat <<MSG

  Stack is up:  https://localhost:8443
  Admin:        http://127.0.0.1:9901/metrics  (/healthz, /readyz)
  Backend:      http://127.0.0.1:8000 (direct, for comparison)
  Logs:         data/backend.log, data/gateway.log

  Trust the dev CA:  curl --cacert certs/dev/ca.crt https://localhost:8443/api/healthz
  (browsers: import certs/dev/ca.crt as a trusted authority)

  Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true
