"""The gRPC surface: the TaskHubSidecarService servicer, request translation and validation.

- ``servicer.py``: the servicer (instance creation and reads, task hubs), with the RPCs of
  ``lifecycle.py``, ``queries.py`` and ``work.py`` mixed in.
- ``status.py``: the one mapping from domain errors to gRPC status codes.
- ``translate.py``: requests to records, records to replies; ``validation.py``: input rules.
"""
