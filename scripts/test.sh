#!/usr/bin/env bash
# Runs the whole test suite against real Redis, a MongoDB-protocol server and celery workers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
if [ "$#" -eq 0 ]; then  # the whole suite: lint and type-check first, they take seconds
  .venv/bin/python -m ruff check procstatus datafix devtools examples tests benchmarks
  .venv/bin/python -m mypy
fi
exec .venv/bin/python -m pytest "$@"
