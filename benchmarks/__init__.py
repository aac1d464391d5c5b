"""Benchmarks of the Redis-backed TaskHubSidecarService: ``python -m benchmarks [--quick]``.

Parts: :mod:`benchmarks.rpc` (StartInstance/GetInstance against the SDK's
in-memory backend) and :mod:`benchmarks.promotion` (precision, scale and memory
of the scheduler worker). Shared helpers live in :mod:`benchmarks.common`.
"""
