#!/usr/bin/env bash
# Builds the static `cairn` binary and the `cairn:local` image (FROM scratch).
#
#   compose/build-image.sh            # build binary and image
#   CAIRN_BIN=path compose/build-image.sh   # image from an existing static binary
#
# `--target` is always passed: without it, `+crt-static` would also apply to
# build scripts and proc-macros, which must stay dynamic (DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
tag="${CAIRN_IMAGE:-cairn:local}"
bin="${CAIRN_BIN:-}"
if [ -z "$bin" ]; then
  echo "== static release build ($target)"
  start=$(date +%s)
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target" --bin cairn
  echo "== static build took $(($(date +%s) - start)) s"
  bin="${CARGO_TARGET_DIR:-target}/$target/release/cairn"
fi

# A static binary has no interpreter; refuse anything `file` does not call
# static rather than ship an image whose containers fail with "no such file
# or directory".
if ! command -v file >/dev/null; then
  echo "== installing file (to check the binary is static)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq file >/dev/null
fi
kind=$(file -L "$bin")
case "$kind" in
*"statically linked"* | *"static-pie linked"*) ;;
*)
  echo "build-image: $bin is not a static binary ($kind); it cannot run FROM scratch" >&2
  exit 1
  ;;
esac

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/cairn"
# The release profile keeps line tables for backtraces; the image ships
# without them (a quarter of the size). Symbols stay.
if command -v strip >/dev/null; then strip --strip-debug "$ctx/cairn"; fi
cp compose/Dockerfile "$ctx/Dockerfile"
echo "== docker build -t $tag"
docker build -q -t "$tag" "$ctx"
docker image ls "$tag"
