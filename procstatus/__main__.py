"""``python -m procstatus``: the ``procstatus`` operator command."""

from __future__ import annotations

from procstatus.cli import _configure_logging, app

if __name__ == "__main__":
    _configure_logging()
    app(prog_name="python -m procstatus")
