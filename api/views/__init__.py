"""The views: resolved rows read, modelled as a graph, composed into maps and reports, serialised.

* ``reads.py`` - every SQL statement the views run (resolved rows of a
  window, alerts, a service's instances, search, the timeline);
* ``graph.py`` - the graph model: contraction, impact, cycles, diffs;
* ``compose.py`` - one composer for the four maps (areas, an area,
  datacenters, a service); ``reports.py`` - a service's summary and impact,
  the diff between two times; ``health.py`` - health classes and the
  problems list; ``series.py`` - one drawn edge minute by minute;
* ``vizceral.py`` - all of the Vizceral serialisation;
* ``params.py`` - the typed view parameters; ``context.py`` - the store,
  cache and settings a view reads through; ``cache.py`` - the result cache.

Nothing here knows about HTTP requests: ``api.routes`` parses them into
``ViewParams`` and a ``ViewContext``.
"""
