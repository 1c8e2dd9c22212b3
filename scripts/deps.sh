#!/usr/bin/env bash
# Installs the Debian 12 packages usaged needs to build, test and run locally (and, with the
# argument `bench`, to run bench/compare), when any is missing. Runs apt-get through sudo when
# not root. Prints nothing when all are present.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build clang libclang-rt-14-dev
  libuv1-dev libhiredis-dev libpq-dev libmsgpack-dev libyaml-dev libsystemd-dev
  postgresql postgresql-contrib redis-server
  python3 python3-msgpack python3-psycopg2 python3-redis python3-pytest
  python3-prometheus-client man-db  # man: systemd-analyze verify looks up Documentation= pages
  valgrind systemd procps iproute2 git ca-certificates
)
# Node.js and npm: the TypeScript client (clients/node) is built and tested with them, and
# bench/compare runs its Node.js peers. Debian's packages, unless a Node.js >= 18 is installed
# already (NodeSource's nodejs provides npm and conflicts with Debian's).
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
     >/dev/null 2>&1; then
  packages+=(nodejs)
fi
command -v npm >/dev/null 2>&1 || packages+=(npm)
# `deps.sh bench`: also what bench/compare needs, and the tests do not: perf for profiles.
if [ "${1:-}" = bench ]; then
  packages+=(linux-perf)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "installing: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -q
# Debian's postgresql and redis packages start their own system services where they can; the
# project never uses those: tests and the local run start servers of their own.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
  "${missing[@]}"
