"""Examples: a gateway (``gateway.py``) and a source over a schema of its own
(``upstream_source.py``)."""
