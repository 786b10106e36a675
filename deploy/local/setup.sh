#!/usr/bin/env bash
# Make this machine ready to run realtime-mirror locally: PostgreSQL on
# 127.0.0.1:5432 and nats-server with JetStream on 127.0.0.1:4222.
# Idempotent: installs only what is missing (Debian packages), starts only what
# is stopped, and leaves running servers alone. Needs root (or sudo) the first time.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# chromium: the consistency report's browser test (headless screenshot of the HTML)
command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL
if ! port_open 5432; then
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  for _ in $(seq 1 30); do port_open 5432 && break; sleep 0.5; done
fi
# The local URLs use user postgres with password postgres over TCP. On a fresh
# Debian cluster TCP logins need a password: set it (trust-auth clusters ignore it).
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting the local postgres user's password for TCP logins"
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
fi

# NATS with JetStream
if ! port_open 4222; then
  log "starting nats-server with JetStream"
  as_root mkdir -p /var/lib/nats-server /var/log
  as_root start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 30); do port_open 4222 && break; sleep 0.5; done
fi

# The Firestore emulator, when this machine has it (Google's package
# google-cloud-cli-firestore-emulator; Debian has no such package, so it is
# started if present and never installed). `make test` points the Firestore
# tests at it; without it they print `skipped: FIRESTORE_EMULATOR_HOST not set`.
FIRESTORE_EMULATOR=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator
FIRESTORE_PORT=8686
if [ -x "$FIRESTORE_EMULATOR" ] && command -v java >/dev/null 2>&1 && ! port_open "$FIRESTORE_PORT"; then
  log "starting the Firestore emulator on 127.0.0.1:$FIRESTORE_PORT"
  mkdir -p target
  nohup "$FIRESTORE_EMULATOR" start --host=127.0.0.1 --port="$FIRESTORE_PORT" \
    >target/firestore-emulator.log 2>&1 </dev/null &
  for _ in $(seq 1 180); do port_open "$FIRESTORE_PORT" && break; sleep 0.5; done
  port_open "$FIRESTORE_PORT" || log "the Firestore emulator did not start (target/firestore-emulator.log)"
fi

port_open 5432 || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }
port_open 4222 || { log "NATS is not reachable on 127.0.0.1:4222"; exit 1; }
log "PostgreSQL 127.0.0.1:5432 and NATS 127.0.0.1:4222 are up"
if port_open "$FIRESTORE_PORT"; then log "Firestore emulator 127.0.0.1:$FIRESTORE_PORT is up"; fi
