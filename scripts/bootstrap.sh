#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently: the project venv (.venv, with
# the dashboard extra and playwright), Debian's chromium for the dashboard's browser test
# (as root; playwright drives it, no browser is downloaded), Debian's faketime for the
# clock-skew test (as root), SecantusDB in a venv of its own (.secantus-venv, skipped
# when MONGODB_URI is set), and a running Redis (skipped when CELERY_BROKER_URL is set).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SECANTUS_VERSION="0.7.0b3"   # a pre-release: keep it pinned exactly

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.procstatus-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing procstatus[test,datafix,cli,dashboard] and playwright into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -e '.[test,datafix,cli,dashboard]' 'playwright>=1.40'
  touch "$stamp"
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium (for tests/test_dashboard_browser.py)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
  else
    say "chromium is missing and this is not root: run 'apt-get install chromium' for the browser test"
  fi
fi

if ! compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's faketime (libfaketime, for tests/test_clock_skew.py)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime) >&2
  else
    say "libfaketime is missing and this is not root: run 'apt-get install faketime' for the clock-skew test"
  fi
fi

if [ -z "${MONGODB_URI:-}" ]; then
  if [ ! -x .secantus-venv/bin/python ] || ! .secantus-venv/bin/python -c \
      "import secantus, sys; sys.exit(secantus.__version__ != '$SECANTUS_VERSION')" 2>/dev/null; then
    say "installing SecantusDB==$SECANTUS_VERSION into .secantus-venv"
    "$PYTHON" -m venv .secantus-venv
    .secantus-venv/bin/python -m pip install --quiet --disable-pip-version-check \
      "SecantusDB==$SECANTUS_VERSION"
  fi
fi

if [ -z "${CELERY_BROKER_URL:-}" ]; then
  .venv/bin/python -c "from devtools.services import ensure_local_redis; ensure_local_redis()"
fi
