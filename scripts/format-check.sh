#!/bin/sh
# Checks that every C file follows .clang-format (ninja -C build format-check).
cd "$(dirname "$0")/.." || exit 1
exec clang-format --dry-run --Werror $(find src include lib tools tests -name '*.[ch]' | sort)
