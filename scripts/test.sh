#!/usr/bin/env bash
# Runs the whole test suite against real Redis, a MongoDB-protocol server and celery workers,
# then the lifecycle and fault tests again with RabbitMQ as the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then  # a selection: extra arguments go to pytest, on one broker
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m ruff check procstatus devtools examples tests benchmarks
.venv/bin/python -m mypy
.venv/bin/python -m pytest
# Celery's other main broker: the lifecycle and every fault test that is not about Redis
# itself (the 20 pool-process kills shrink to 5 here; the same mechanism runs above).
AMQP_URL=${PROCSTATUS_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}
CELERY_BROKER_URL=$AMQP_URL PROCSTATUS_TEST_KILLS=5 .venv/bin/python -m pytest \
  tests/test_lifecycle.py tests/test_reliability.py tests/test_endings.py tests/test_callqueue.py
