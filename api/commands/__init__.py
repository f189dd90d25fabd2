"""The ``phobos`` command and the subcommands that run a component as a process of its own.

* ``phobos.py`` - the entry point: a table of every subcommand, each
  configured and imported only when it runs (so ``phobos trace`` on a host
  loads neither the store nor Flask), and the small store jobs themselves
  (``migrate``, ``sql``, ``catalog``, ``load``, ``summary``, ``demo``,
  ``resolve``);
* ``serve.py`` - ``phobos serve``: the API and web UI (development server,
  threads), with the resolution stage and, with ``--kafka``, the consumer;
* ``up.py`` - ``phobos up``: the embedded mode in one command;
* ``ingest.py`` - ``phobos ingest`` (the Kafka consumer, with its own
  ``/metrics``) and ``phobos kafka`` (topic set-up), plus the Kafka flags of
  ``phobos migrate``.

``phobos simulate`` is ``api/simulation/simulate.py``, ``phobos trace`` the
tracer's ``tracer/agent.py``.
"""
