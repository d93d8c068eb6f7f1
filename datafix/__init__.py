"""One-off data migrations for databases written by older procstatus schemes.

Each migration is a module runnable with ``python -m datafix.<name>``; see
``datafix/OPERATOR.md`` for how operators run them.
"""
