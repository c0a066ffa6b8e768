#!/usr/bin/env bash
# Run by `make test` before pytest: install the system packages some tests need (PostgreSQL server,
# Chromium) when they are missing and this shell can (root and apt-get). Otherwise say which tests
# will be skipped and how to enable them. Never fails the build itself: under
# OODCACHE_REQUIRE_SERVICES=1 (CI) the tests that need a missing service fail instead.
set -uo pipefail
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing the system packages the tests need: ${need[*]} (apt-get, once)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; then
    exit 0
  fi
  echo "make test: apt-get install ${need[*]} failed; the tests that need them will be skipped"
else
  echo "make test: ${need[*]} not installed and not installable here (needs root and apt-get);"
  echo "  the tests that need them will be skipped. Enable them with: sudo apt-get install -y ${need[*]}"
fi
exit 0
