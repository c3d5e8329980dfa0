"""What operators see and run: metrics, health, the status page, logs, launchd.

``/metrics``, ``/healthz`` and the queue report, the status page at ``/ui``
(its HTML in ``ui/``, the timeline of the worker's runs in ``timeline.py``),
the JSON log observer, ``foreman launchd``, and the daemon's reactor on a
monotonic clock (``reactor_clock.py``). It may import
:mod:`foreman.queue` and below; it does not know about the ``/jobs`` surface
(:mod:`foreman.jobs`) or the front.
"""
