"""Dapr Workflow's SDKs on their own port (see servicer.py)."""
