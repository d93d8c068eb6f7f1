"""``python -m procstatus``: the ``procstatus`` operator command."""

from __future__ import annotations

from procstatus.cli import main

if __name__ == "__main__":
    main(prog_name="python -m procstatus")
