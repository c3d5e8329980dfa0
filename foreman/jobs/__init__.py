"""The asynchronous ``/jobs`` surface: fire-and-forget jobs, webhooks, artifacts.

Reading a submission, showing a job, the ``completion`` artifact, the state
events and the durable, signed webhook outbox that delivers them, and the
Klein app mounted at ``/jobs``. It may import :mod:`foreman.queue` and
below; it does not know about operations (:mod:`foreman.ops`) or the front.
"""
