"""What operators see and run: metrics, health, the status page, logs, launchd.

``/metrics``, ``/healthz`` and the queue report, the status page at ``/ui``
(its HTML in ``ui/``, the timeline of the worker's runs in ``timeline.py``),
the JSON log observer, and ``foreman launchd``. It may import
:mod:`foreman.queue` and below; it does not know about the ``/jobs`` surface
(:mod:`foreman.jobs`) or the front.
"""
