#!/usr/bin/env bash
# Runs the reminder cycle benchmark at platform scale and prints its table.
# Needs PostgreSQL on 127.0.0.1:5432 with trust authentication for the
# `postgres` user. Installs Postfix's smtp-sink and smtp-source if missing
# (Debian), starts smtp-sink on a free loopback port and stops it at exit.
# Extra arguments go to the benchmark, e.g. `--sessions 100000`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
    if [ ! -x /usr/sbin/smtp-sink ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
        # The package may start a mail server on port 25; the benchmark
        # only needs the two tools.
        service postfix stop >/dev/null 2>&1 || postfix stop >/dev/null 2>&1 || true
    fi
    export PATH="$PATH:/usr/sbin"
fi

cargo build --release --locked --bins --examples

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user_option=()
[ "$(id -u)" = 0 ] && user_option=(-u postfix)
smtp-sink "${user_option[@]}" "127.0.0.1:$port" 256 &
sink_pid=$!
trap 'kill "$sink_pid" 2>/dev/null || true' EXIT
sleep 0.5

./target/release/examples/benchmark --smtp-port "$port" --smtp-source "$(command -v smtp-source)" "$@"
