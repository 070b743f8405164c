#!/usr/bin/env bash
# Installs what this checkout needs on a Debian machine and is missing: Deno (from npm), the
# Debian packages of the chosen profile, and the project's npm dependencies (cached locally, so
# processes inside network namespaces without registry access find them).
#
#   scripts/ensure-deps.sh run    # what `pqconnect client|server` needs
#   scripts/ensure-deps.sh test   # plus what the test suite needs
set -euo pipefail

DENO_VERSION=2.9.6
profile=${1:-run}
root=$(cd "$(dirname "$0")/.." && pwd)

run_packages=(iproute2 iptables nftables libsodium23)
test_packages=(dnsmasq-base dnsutils curl iputils-ping tcpdump iperf3 debootstrap procps python3)

say() { printf 'ensure-deps: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
wanted=("${run_packages[@]}")
[ "$profile" = test ] && wanted+=("${test_packages[@]}")
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v deno >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v deno >/dev/null 2>&1; then
  say "installing Deno $DENO_VERSION from npm"
  as_root npm install -g --no-fund --no-audit "deno@$DENO_VERSION" >/dev/null
fi
command -v deno >/dev/null 2>&1 || { say "Deno is still missing after installing it"; exit 1; }

# The unprivileged user both daemons drop to.
if ! getent passwd pqconnect >/dev/null; then
  say "creating the system user pqconnect"
  as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pqconnect
fi

# npm dependencies into node_modules (and Deno's cache), from the lock file.
if [ ! -d "$root/node_modules/@oqs/liboqs-js" ] || [ "$root/deno.lock" -nt "$root/node_modules" ]; then
  say "caching npm dependencies"
  (cd "$root" && deno install --frozen >/dev/null)
  touch "$root/node_modules"
fi
