"""Test-only code: the models and Celery app the test workers run."""
