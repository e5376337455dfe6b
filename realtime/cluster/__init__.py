"""Sessions across many machines on Ray (``docs/scale-out.md``): worker actors that each run the
server in-process on their own address (``worker.py``), a front with the same HTTP API that
places sessions on them (``front.py``, ``placement.py``), watches them through Ray
(``membership.py``) and aggregates their metrics (``front_metrics.py``). Needs the ``cluster``
extra (Ray); ``avatar serve`` on one machine does not."""
