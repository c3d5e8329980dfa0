"""Formats every side of foreman shares: the bytes of Ollama's wire and foreman's own.

Go's JSON and ``time.Time`` as Ollama writes them (and Go's scanner, for
its error messages and its nesting limit), the binding of JSON to Go
structs with Go's errors and Ollama's native generation requests, Ollama's
duration grammar and model-name rules, byte sizes, timestamps and the
webhook signature. Pure functions and values: this package imports nothing else of
foreman, so the server, the client and the simulated Ollama can all use it.
"""
