"""One-off data migrations for databases written by older procstatus schemes.

Each migration is a module runnable with ``python -m procstatus.datafix.<name>``; see
``procstatus/datafix/OPERATOR.md`` for how operators run them.
"""
