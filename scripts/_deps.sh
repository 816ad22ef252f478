# Sourced by scripts/test: system packages the test suite needs, installed when missing.
# Quiet when there is nothing to do or the install works; the whole log when it fails.

have_postgres_server_binaries() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# The PostgreSQL tests use the local server when one answers, and otherwise start a throwaway
# cluster from Debian's server binaries (tests/support/postgres.py): a fresh machine needs those.
ensure_postgres_server_binaries() {
  have_postgres_server_binaries && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "keybrake: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; the PostgreSQL tests will fail." >&2
    echo "keybrake: install them (Debian: apt-get install -y postgresql), or set KEYBRAKE_TEST_DATABASE_URL." >&2
    return 0  # the tests say it again, loudly; other tests may still be worth running
  fi
  local log
  log="$(mktemp -t keybrake-apt.XXXXXX)"
  echo "keybrake: installing PostgreSQL's server binaries (apt-get install postgresql)" >&2
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; } >"$log" 2>&1 \
     || ! have_postgres_server_binaries; then
    cat "$log" >&2
    echo "keybrake: installing postgresql failed (log above, also in $log)" >&2
    exit 1
  fi
  rm -f "$log"
}

# The fleet scenarios run one replica under a skewed clock (tests/scenarios/test_fleet.py).
ensure_faketime() {
  command -v faketime >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "keybrake: faketime is missing; the skewed-clock fleet scenario will fail (Debian: apt-get install -y faketime)." >&2
    return 0
  fi
  local log
  log="$(mktemp -t keybrake-apt.XXXXXX)"
  echo "keybrake: installing faketime (apt-get install faketime)" >&2
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends faketime \
         || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends faketime; }; } >"$log" 2>&1 \
     || ! command -v faketime >/dev/null 2>&1; then
    cat "$log" >&2
    echo "keybrake: installing faketime failed (log above, also in $log)" >&2
    exit 1
  fi
  rm -f "$log"
}

have_chromium() {
  [ -x "${KEYBRAKE_CHROMIUM:-/usr/bin/chromium}" ]
}

# The dashboard's browser tests drive Debian's chromium through Playwright (tests/dashboard/): a
# system browser, never one Playwright downloads. With its recommended packages: the fonts the
# screenshots need.
ensure_chromium() {
  have_chromium && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "keybrake: no chromium at ${KEYBRAKE_CHROMIUM:-/usr/bin/chromium}; the dashboard's browser tests will fail." >&2
    echo "keybrake: install it (Debian: apt-get install -y chromium), or point KEYBRAKE_CHROMIUM at one." >&2
    return 0
  fi
  local log
  log="$(mktemp -t keybrake-apt.XXXXXX)"
  echo "keybrake: installing chromium (apt-get install chromium)" >&2
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
         || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; } >"$log" 2>&1 \
     || ! have_chromium; then
    cat "$log" >&2
    echo "keybrake: installing chromium failed (log above, also in $log)" >&2
    exit 1
  fi
  rm -f "$log"
}
