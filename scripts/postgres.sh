#!/usr/bin/env bash
# PostgreSQL for the checkpointer tests: `install` puts Debian's server binaries on the machine
# (once). The tests start and stop their own throwaway cluster with these binaries.
set -euo pipefail
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
case "${1:-install}" in
install)
    if [ -n "$(bindir)" ] && [ -x "$(bindir)/initdb" ]; then
        exit 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "PostgreSQL is not installed; run as root or: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    echo "Installing PostgreSQL (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    ;;
bindir)
    bindir
    ;;
*)
    echo "usage: $0 install|bindir" >&2
    exit 2
    ;;
esac
