"""The catalog as the API keeps it: versions in the store, and the lookups read from them.

The catalog's model, YAML loader and matcher are ``tracer/catalog.py`` (the
tracer names processes with it too).  Here: ``versions.py`` writes each
loaded catalog as a new version of the ``catalog_*`` tables and reads one
back; ``lookups.py`` turns the current version into what the resolution and
the views need (names, areas, address ranges); ``example.yaml`` is a
catalog to start from.
"""
