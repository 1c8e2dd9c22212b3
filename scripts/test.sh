#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is missing, checks that every
# C file follows .clang-format (scripts/format-check.sh), builds, and runs
#   1. unit and integration tests on the normal build (the tests of the database on Debian's
#      PostgreSQL 15 and again on PostgreSQL 17, in Supabase's shape: tests/meson.build),
#   2. the same under ASan+UBSan, but for the PostgreSQL 17 runs (the daemon's memory does not
#      depend on the server's version; the runs on 15 cover it),
#   3. the daemon's integration runs under valgrind (all but the two volume runs),
#   4. short libFuzzer runs of the decoder and the config parser (clang).
# Integration tests start their own PostgreSQL and Redis; nothing already running is used.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

setup() { # setup DIR [meson options...]
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

step() { printf '\n=== %s\n' "$*"; }

step "format (.clang-format)"
scripts/format-check.sh

step "build"
setup build
meson compile -C build

step "unit and integration tests"
meson test -C build --print-errorlogs --num-processes 2

step "ASan + UBSan"
setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
meson compile -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  meson test -C build-asan --print-errorlogs --num-processes 2 --timeout-multiplier 3 \
  --no-suite pg17

# Every suite but the two volume runs (ingest, refresh: 200,000 events and views over them take
# minutes under valgrind; ASan covers them above).
step "valgrind: the daemon's integration runs"
USAGED_VALGRIND=1 meson test -C build --print-errorlogs --suite integration --num-processes 2 \
  --timeout-multiplier 6 protocol lifecycle migrate limits budgets spool client metrics systemd

step "fuzz (libFuzzer, short run)"
CC=clang setup build-fuzz -Dfuzz=true -Dintegration=false -Db_sanitize=address,undefined \
  -Db_lundef=false
meson compile -C build-fuzz
meson test -C build-fuzz --print-errorlogs --suite fuzz

step "all tests passed"
