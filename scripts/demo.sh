#!/usr/bin/env bash
# Runs the example upload app end to end and prints its statuses as they change.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m examples.demo "$@"
