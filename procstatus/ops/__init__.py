"""The operator layer: what the ``procstatus`` CLI and the web dashboard both call.

- :mod:`~procstatus.ops.errors`: the one input-error type (:class:`OperatorError`, and
  :class:`NotFound` for an id that names no document) that each front end translates at
  its edge (the CLI: one line on stderr; the dashboard: an HTTP status);
- :mod:`~procstatus.ops.values`: what an operator types and reads — statuses, durations,
  ages, JSON;
- :mod:`~procstatus.ops.sources`: the ``Proc`` collections to look at;
- :mod:`~procstatus.ops.session`: the app module (``-A``), the MongoDB connection, the
  sources, and :meth:`~procstatus.ops.session.Session.locate`, the one rule that turns a
  typed id into a document;
- :mod:`~procstatus.ops.queries`: the read-only status queries, each through an index;
- :mod:`~procstatus.ops.workers`: the workers' heartbeats;
- :mod:`~procstatus.ops.family`: a document's parent and children;
- :mod:`~procstatus.ops.actions`: the writes an operator may make on one document
  (cancel, reset, retry) and the policy that refuses them.

Nothing here imports typer, rich or a web framework. The worker's modules it needs
(``document``, ``transitions``, ``dispatch``, ``sweeper``, ``liveness``) are imported at
module level: none of them imports Celery, so neither does the read-only path
(``tests/test_cli.py`` checks it); Celery comes in only with the app module (``-A``).
"""
