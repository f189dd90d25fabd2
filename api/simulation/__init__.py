"""A simulated fleet for ``phobos simulate``, ``phobos demo`` and ``phobos up --simulate``.

``fleet.py`` is the pure, deterministic model (areas, services, instances,
dependencies and a time line of events); ``simulate.py`` turns it into the
records a tracer on every host would have sent and writes them, with the
fleet's catalog, into a store.  It lives in ``api/`` because it writes the
store; it speaks the tracer's record contract (``tracer/records.py``).
"""
