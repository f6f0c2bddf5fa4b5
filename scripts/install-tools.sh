#!/usr/bin/env bash
# Install the tools the topology tests start themselves (tests/clusters.py, tests/mariadb.py):
# PgBouncer, and mariadbd for a MariaDB server of their own (mariadb-server, usually there for
# the shared server already). PostgreSQL's own binaries (initdb, pg_ctl, pg_basebackup) come
# with the server package.
# Idempotent and quiet: installs only what is missing, via apt-get, as root or with passwordless
# sudo. Where it cannot install, it says why and exits 0: the topology tests then skip with a
# hint, or fail under CI=true.
set -uo pipefail

missing=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
[ "${#missing[@]}" -eq 0 ] && exit 0

say() { echo "install-tools: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
  say "apt-get is not available; install ${missing[*]} yourself to run the topology tests"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  say "not root and no passwordless sudo; run: sudo apt-get install -y ${missing[*]}"
  exit 0
fi

apt() {  # apt ARGS...: quiet, waits for another apt/dpkg to release its lock, shows output on failure
  local output
  if ! output=$(DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -qq \
      -o DPkg::Lock::Timeout=300 "$@" 2>&1); then
    printf '%s\n' "$output" >&2
    return 1
  fi
}

say "installing ${missing[*]}"
# A fresh machine may have no package lists yet: update once and retry.
if ! apt install -y --no-install-recommends "${missing[@]}"; then
  apt update && apt install -y --no-install-recommends "${missing[@]}" \
    || say "apt-get could not install ${missing[*]}"
fi
exit 0
