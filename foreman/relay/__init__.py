"""One call to Ollama and its answer back to the caller.

The target and its HTTP agent, request bodies on their way up, the relay
that streams an answer back byte for byte (and keeps the calls in flight:
it limits their silence and can cut them all), the polled inventory of what
Ollama has and holds, and the seam (:mod:`.generation`) every generation
call passes through. It may import :mod:`foreman.http` and
:mod:`foreman.wire`; it knows nothing of queues or jobs.
"""
