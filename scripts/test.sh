#!/usr/bin/env bash
# Runs Runnel's whole test suite on a fresh machine, installing what it needs.
# Used by CI (.ci/run) and by developers: `./scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi

step "format check (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build tests"
cargo test --workspace --locked --no-run

step "run tests"
# PROPTEST_CASES raises the number of random cases of the property tests (default 64).
cargo test --workspace --locked
