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
# The native KEMs (the reference's own libraries); Debian 13 and later package them.
kem_packages=(librandombytes1 libmceliece1 libntruprime1)
kem_dir=/usr/local/lib/pqconnect-ts # ffi/kem_native.ts PRIVATE_KEM_DIR
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

# The native KEMs: from the distribution where it has them; otherwise Debian 13's builds, fetched
# by apt with a private configuration (its own sources list, lists and cache, signatures checked
# against the system's Debian archive keyring) and unpacked into $kem_dir. The system's package
# database never sees them, so it never mixes suites.
kem_libs=(librandombytes-kernel.so.1 libmceliece.so.1 libntruprime.so.1)
have_kem_libs() {
  local d f
  for d in /usr/lib/x86_64-linux-gnu "$kem_dir"; do
    for f in "${kem_libs[@]}"; do [ -e "$d/$f" ] || continue 2; done
    return 0
  done
  return 1
}
fetch_private_kems() {
  local mirror work keyring
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || { say "no Debian archive keyring at $keyring: native KEMs skipped"; return 1; }
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d" "$work/etc/sources.list.d"
  # apt downloads as its sandbox user _apt: let it write the private lists and archives.
  chmod 0755 "$work"
  getent passwd _apt >/dev/null && chown -R _apt "$work/lists" "$work/archives"
  echo "deb [signed-by=$keyring] $mirror trixie main" >"$work/etc/sources.list"
  local -a apt_opts=(
    -o "Dir::Etc::SourceList=$work/etc/sources.list"
    -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
    -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache::Archives=$work/archives"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "Dir::Etc::Preferences=$work/etc/preferences"
    -o "Acquire::Languages=none"
  )
  say "fetching Debian 13's ${kem_packages[*]} (signed) into $kem_dir"
  if ! apt-get "${apt_opts[@]}" update -qq >/dev/null ||
    ! (cd "$work/archives" && apt-get "${apt_opts[@]}" download "${kem_packages[@]}" >/dev/null); then
    say "could not fetch the native KEMs; the WebAssembly KEMs will be used"
    rm -rf "$work"
    return 1
  fi
  as_root mkdir -p "$kem_dir"
  local deb
  for deb in "$work"/archives/*.deb; do
    mkdir -p "$work/x"
    dpkg-deb -x "$deb" "$work/x"
  done
  local f
  for f in "${kem_libs[@]}"; do
    as_root install -m 0644 "$(readlink -f "$work/x/usr/lib/x86_64-linux-gnu/$f")" "$kem_dir/$f"
  done
  rm -rf "$work"
}
if [ "$(uname -m)" = x86_64 ] && ! have_kem_libs; then
  if apt-cache show libmceliece1 >/dev/null 2>&1 && apt-cache show libntruprime1 >/dev/null 2>&1; then
    say "installing Debian packages: ${kem_packages[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${kem_packages[@]}" >/dev/null
  else
    fetch_private_kems || true
  fi
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
