#!/usr/bin/env bash
# Builds (once) a Debian 13 root holding the reference PQConnect 1.2.x, used as a
# peer by the interoperability tests. Safe to re-run: a complete root is kept.
set -euo pipefail
ROOT=${PQREF_ROOT:-/srv/pqref}
STAMP="$ROOT/.pqconnect-ts-complete"
if [ -f "$STAMP" ]; then echo "reference root ready: $ROOT"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
debootstrap --variant=minbase \
  --include=pqconnect,pqconnect-server,python3-pqconnect,iproute2,iptables,nftables \
  trixie "$ROOT" "$MIRROR"
touch "$STAMP"
echo "reference root ready: $ROOT"
