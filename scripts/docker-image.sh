#!/usr/bin/env bash
# Builds the Runnel image without pulling anything: a statically linked `runnel` (release
# build) in a `FROM scratch` image. Usage: ./scripts/docker-image.sh [IMAGE] (default
# runnel:dev, or $RUNNEL_IMAGE). With a registry, docker/Dockerfile does the same in one
# `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-${RUNNEL_IMAGE:-runnel:dev}}
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}

if ! command -v docker >/dev/null; then
  echo "docker not found: install Docker to build the image" >&2
  exit 1
fi

echo "==> static release build of runnel ($target, crt-static)"
# The static build has its own target directory subtree (target/$target/release), so it does
# not invalidate the debug builds the tests use.
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target "$target" -p runnel-cli
bin="$target_dir/$target/release/runnel"

if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
  echo "$bin is dynamically linked; the scratch image needs a static binary" >&2
  ldd "$bin" >&2
  exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/data"
cp "$bin" "$ctx/rootfs/runnel"
strip "$ctx/rootfs/runnel" 2>/dev/null || true
printf 'hosts: files dns\n' > "$ctx/rootfs/etc/nsswitch.conf"
cp docker/Dockerfile.scratch "$ctx/Dockerfile"

echo "==> docker image $image"
# The classic builder: it needs no BuildKit, no buildx and no registry for FROM scratch.
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image: $((size / 1024 / 1024)) MiB ($size bytes)"
