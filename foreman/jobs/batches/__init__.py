"""Batches on the durable queue: OpenAI's Files and Batch APIs, lists of ``/jobs`` (ADR-0029)."""
