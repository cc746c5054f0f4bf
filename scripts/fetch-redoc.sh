#!/usr/bin/env bash
# Put ReDoc's standalone bundle (npm package redoc) where /redoc serves it from, so the docs
# work with no internet. Idempotent; needs npm and the npm registry once.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.5.4
target=mlops_backend/static/redoc
[ -f "$target/redoc.standalone.js" ] && [ "$(cat "$target/VERSION" 2>/dev/null)" = "$VERSION" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "redoc@$VERSION" >/dev/null && tar xzf "redoc-$VERSION.tgz")
mkdir -p "$target"
cp "$tmp/package/bundles/redoc.standalone.js" "$tmp/package/bundles/redoc.standalone.js.LICENSE.txt" "$target/"
echo "$VERSION" > "$target/VERSION"
