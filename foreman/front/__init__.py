"""The HTTP front: the one place where every surface's routes are composed.

The native Ollama API's routes (relayed, served from the inventory, or
queued as generation), with ``/jobs``, ``/ui``, ``/metrics`` and
``/healthz`` mounted beside them behind the token guard. It may import
every package below it; only :mod:`foreman.service` imports it.
"""
