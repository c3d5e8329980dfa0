"""The durable queue: every generation call as a job row, run by one worker.

The job record and its transitions, the SQLite store, the scheduler that
drains by model, the single worker, two-slot residency, the sync callers
waiting on their jobs, and the queue's life around the worker (start-up
recovery, the TTL sweep). It may import :mod:`foreman.relay` and below;
it never imports the ``/jobs`` surface, which plugs into it through
:class:`~foreman.queue.transitions.TransitionRecorder`.
"""
