#!/usr/bin/env bash
# Runs Runnel's whole test suite on a fresh machine, installing what it needs:
# kcat (Debian), a Python venv with kafka-python (PyPI) under target/pyenv, docker-compose
# (Debian) when Docker has no compose; builds the image runnel:dev for the compose suite.
# Used by CI (.ci/run) and by developers: `./scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi

step "client tools: kcat and kafka-python"
if ! command -v kcat >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null) \
      || echo "could not install kcat; its test fails in CI and is skipped locally"
  else
    echo "kcat missing and not root: sudo apt-get install kcat (its test is skipped locally)"
  fi
fi
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import kafka' 2>/dev/null; then
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install -q kafka-python
fi
command -v kcat >/dev/null && kcat -V | head -1 || true
target/pyenv/bin/python -c 'import kafka; print("kafka-python", kafka.__version__)'

step "docker and compose (for the compose fault-injection suite)"
have_docker=false
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  have_docker=true
  docker version --format 'docker engine {{.Server.Version}}'
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
        || echo "could not install docker-compose"
    else
      echo "docker compose missing and not root: sudo apt-get install docker-compose"
    fi
  fi
  docker compose version 2>/dev/null || docker-compose version --short 2>/dev/null || true
elif [ "${CI:-}" = true ]; then
  echo "docker is not available: CI needs it for the compose fault-injection suite" >&2
  exit 1
else
  echo "SKIPPING the compose fault-injection suite: docker is not installed or its daemon is not reachable"
fi

step "format check (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the runnel binary and the tests"
cargo build --locked -p runnel-cli
cargo test --workspace --locked --no-run

if [ "$have_docker" = true ]; then
  step "docker image runnel:dev (static release build, FROM scratch) for the compose suite"
  image_started=$(date +%s)
  ./scripts/docker-image.sh runnel:dev
  echo "image built in $(( $(date +%s) - image_started )) s"
fi

step "run tests"
# PROPTEST_CASES raises the number of random cases of the property tests (default 64);
# RUNNEL_SEED replays a randomized end-to-end test; RUNNEL_SOAK=1 runs the compose
# fault-injection scenarios (tests/tests/compose_faults.rs) longer, each fault five times.
cargo test --workspace --locked

echo
echo "all tests passed in $(( $(date +%s) - started )) s"
