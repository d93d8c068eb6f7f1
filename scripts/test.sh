#!/usr/bin/env bash
# Runs the whole test suite against real Redis, a MongoDB-protocol server and celery workers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
