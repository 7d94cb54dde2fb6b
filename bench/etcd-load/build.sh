#!/usr/bin/env bash
# Builds etcd-load (release) with the protoc that the protoc-bin-vendored
# build-dependency brings, and prints the binary's path on stdout.
#
#   bench/etcd-load/build.sh [CARGO BUILD FLAGS, e.g. -j 1]   # CARGO_TARGET_DIR defaults to Cairn's target/
#
# etcd-client's build script runs protoc (through prost-build, which honours
# PROTOC); no system protoc is needed or used.
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(cd "$DIR/../.." && pwd)/target}

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) arch=linux-x86_64 ;;
Linux-aarch64) arch=linux-aarch_64 ;;
Darwin-arm64) arch=macos-aarch_64 ;;
Darwin-x86_64) arch=macos-x86_64 ;;
*) echo "etcd-load/build.sh: no vendored protoc for $(uname -sm)" >&2; exit 1 ;;
esac
# cargo metadata unpacks the locked protoc-bin-vendored-<arch> crate and says where.
manifest=$(cargo metadata --locked --format-version 1 --manifest-path "$DIR/Cargo.toml" |
    grep -o "\"manifest_path\":\"[^\"]*/protoc-bin-vendored-$arch-[0-9.]*/Cargo.toml\"" | head -1 |
    sed 's/^"manifest_path":"//; s/"$//')
[ -n "$manifest" ] || { echo "etcd-load/build.sh: protoc-bin-vendored-$arch not in the lock file" >&2; exit 1; }
export PROTOC="${manifest%/Cargo.toml}/bin/protoc"

cargo build --release --locked --manifest-path "$DIR/Cargo.toml" "$@" >&2
echo "$CARGO_TARGET_DIR/release/etcd-load"
