"""HTTP plumbing every surface of foreman shares.

The site and request (body limits, access log, metrics hook), Klein routing
helpers that answer like Ollama's gin router, the Bearer token guard, CORS,
Ollama-shaped error answers and the listen-address check. It may import
:mod:`foreman.wire` only; every surface above it (relay, queue, jobs, ops,
front) builds its answers with it.
"""
