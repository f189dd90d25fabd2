"""Resolution: endpoint rows and spans become edges between services, once, as minutes close.

* ``tcp.py`` - the TCP resolution as SQL: a client's remote ip:port -> the
  listener that owned it at that minute (wildcard and loopback listeners too),
  untraced clients from servers' inbound records, an edge seen from both
  ends counted once; over a ``Window`` of the minute or hourly rollup;
* ``traces.py`` - Zipkin spans linked parent -> child across posts into calls;
* ``stage.py`` - the stage that runs both for every settled minute (again
  when late rows reach it) and writes the resolved tables the views read.

The views (``api.views.reads``) run the same SQL for the minutes the stage
has not reached yet.
"""
