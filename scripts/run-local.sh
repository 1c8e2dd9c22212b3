#!/usr/bin/env bash
# The local run: installs what is missing, builds, starts PostgreSQL and Redis under .local/
# (git-ignored), applies the schema, and runs usaged in the foreground on conf/dev.yaml.
# Ctrl-C stops the daemon (it drains first) and then both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

if [ ! -f build/build.ninja ]; then
  meson setup build >/dev/null
fi
meson compile -C build

mkdir -p .local
servers=(/usr/bin/python3 tests/integration/servers.py)
"${servers[@]}" start .local 54329 63799 >/dev/null
trap '"${servers[@]}" stop .local' EXIT

psql=(/usr/lib/postgresql/15/bin/psql -X -q -h 127.0.0.1 -p 54329 -U postgres)
if [ -z "$("${psql[@]}" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'promptcraft'")" ]; then
  "${psql[@]}" -d postgres -c "CREATE DATABASE promptcraft"
fi
if ! build/usaged --migrate -c conf/dev.yaml; then
  echo "run-local: the migrations failed on the database in .local/ (a database left by an" \
       "older checkout, before its migrations were final?); 'rm -rf .local' starts afresh" >&2
  exit 1
fi

echo "usaged: socket .local/usaged.sock, tcp 127.0.0.1:7878; try: build/usagectl -s .local/usaged.sock ping"
build/usaged -c conf/dev.yaml
