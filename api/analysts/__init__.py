"""Analysts' SQL: one read-only statement over Phobos' own tables, checked on ClickHouse's parse of it.

``sql.py`` decides which statements may run and runs them on a pool of
read-only connections with limits of their own; ``POST /api/v1/sql``
(``api/routes/sql.py``) and ``phobos sql`` use it.
"""
