"""The procstatus web dashboard: ``procstatus [-A MODULE] dashboard``.

Counts per class and status, the documents under way (live), recent failures grouped by
cause, each document with its timeline and children, the workers' heartbeats, and JSON
for all of it; cancel, retry and reset with ``--allow-actions`` and a token. Needs the
``dashboard`` extra (``pip install 'procstatus[dashboard]'``: Starlette, uvicorn,
Jinja2); the rest of procstatus does not.
"""

from __future__ import annotations

from procstatus.dashboard.app import create_app

__all__ = ["create_app"]
