"""TEST SUPPORT ONLY: start SecantusDB with one known upstream flaw narrowed.

SecantusDB 0.7.0b3 answers ``findAndModify`` by writing through the filter
``{_id: X, $and: [<query>]}``. Its write path only uses an index when no top-level key
starts with ``$``, so every findAndModify whose query names more than ``_id`` scans the
whole collection (about 100-170 ms per call at 20k documents). procstatus claims a task
with exactly such a call.

This launcher, run with the SecantusDB venv's interpreter, wraps
``Storage._try_index_id_keys`` so that a filter with a plain ``_id`` equality is looked
up through the ``_id`` point lookup first. That only narrows the candidate set: the
caller re-applies the full filter to every candidate, so results are unchanged. It is
applied to the exact version it was written against and to nothing else; procstatus
itself never depends on it and runs unchanged on mongod.

Usage: python secantus_launcher.py <secantusd-py arguments>
"""

from __future__ import annotations

import sys

PATCHED_VERSION = "0.7.0b3"


def _narrow_id_lookups() -> bool:
    import secantus
    from secantus import storage

    if secantus.__version__ != PATCHED_VERSION:
        return False
    original = storage.Storage._try_index_id_keys

    def try_index_id_keys(self, db, coll, filter, *, collation=None):  # type: ignore[no-untyped-def]
        if (
            collation is None
            and isinstance(filter, dict)
            and len(filter) > 1
            and "_id" in filter
            and not self._is_timeseries(db, coll)
        ):
            id_keys = storage._id_point_lookup_keys(filter["_id"])
            if id_keys is not None:
                rids = [self._doc_recordid(db, coll, k) for k in id_keys]
                return [r for r in rids if r is not None]
        return original(self, db, coll, filter, collation=collation)

    storage.Storage._try_index_id_keys = try_index_id_keys
    return True


def main() -> int:
    patched = _narrow_id_lookups()
    print(
        "secantus_launcher: _id lookup narrowing "
        + ("applied" if patched else f"NOT applied (only for SecantusDB {PATCHED_VERSION})"),
        file=sys.stderr,
        flush=True,
    )
    from secantus.cli import main as secantus_main

    sys.argv[0] = "secantusd-py"
    return int(secantus_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
