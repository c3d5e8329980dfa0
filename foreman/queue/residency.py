"""Two-slot residency: a pinned embedder beside one rotating worker model (ADR-0013).

Before a job runs, the worker asks :class:`Residency` to make the job's model
the resident worker model. A model already resident costs nothing; anything
else is unloaded explicitly (``keep_alive: 0``) *before* the new model is
loaded and pinned, so the target never holds more than the embedder and one
worker model, even if someone else loaded models behind foreman's back.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from twisted.logger import Logger

from foreman.queue.job import Job
from foreman.relay.forward import Attempt, Outcome, Relay
from foreman.relay.inventory import Inventory, UpstreamStatusError
from foreman.relay.upstream import describe_failure, unreachable_message
from foreman.wire import gojson
from foreman.wire.durations import FOREVER, DurationError, parse_keep_alive
from foreman.wire.model_names import canonical_model_name

log = Logger()


def keep_alive_value(seconds: float) -> int | float:
    """``keep_alive`` as Ollama reads it: seconds, or -1 for forever."""
    if math.isinf(seconds):
        return -1
    return int(seconds) if seconds == int(seconds) else seconds


def pin_keep_alive(body: bytes, keep_alive: float) -> bytes:
    """The caller's body, with foreman's ``keep_alive`` instead of the caller's.

    A caller's ``keep_alive`` would decide when the worker model leaves (0
    unloads it after every call, a reload per job), so foreman's value
    replaces it. A body without one is left byte for byte as sent: Ollama
    then keeps the expiry foreman set when it loaded the model.
    """
    document = gojson.loads(body)
    if isinstance(document, dict) and "keep_alive" in document:
        try:
            parse_keep_alive(document["keep_alive"])
        except DurationError:
            return body  # Ollama refuses it in its own words
        document["keep_alive"] = keep_alive_value(keep_alive)
        return json.dumps(document, separators=(",", ":")).encode()
    return body


def whole_reply_body(body: bytes, keep_alive: float, *, native: bool = True) -> bytes:
    """A body asking for one whole reply (``stream: false``), pinned: for jobs
    that have no caller to stream to. The other dialects have no
    ``keep_alive`` (Ollama drops it): residency pinned the model instead."""
    document: Any = gojson.loads(body)
    if not isinstance(document, dict):
        return body
    document["stream"] = False
    if native:
        document["keep_alive"] = keep_alive_value(keep_alive)
    return json.dumps(document, separators=(",", ":")).encode()


class Residency:
    def __init__(
        self,
        relay: Relay,
        inventory: Inventory,
        *,
        keep_alive: float = FOREVER,
        embed_model: str | None = None,
    ) -> None:
        self._relay = relay
        self._inventory = inventory
        self.keep_alive = keep_alive
        self.embed_model = embed_model
        self._embedder = canonical_model_name(embed_model) if embed_model else None
        #: The worker model foreman last made resident (canonical name).
        self.worker_model: str | None = None
        #: True while the target cannot list its loaded models.
        self._unmanaged = False
        #: Model loads and unloads foreman asked for.
        self.loads = 0
        self.unloads = 0

    @property
    def inventory(self) -> Inventory:
        """What the target has and holds (polled)."""
        return self._inventory

    async def prepare(self, job: Job) -> Attempt | None:
        """Make ``job.model`` the resident worker model.

        ``None`` when the job may run; ``UNREACHABLE`` when the target could
        not be asked (try again later). Residency is best effort beyond
        that: a load Ollama refuses is left to the job's own call, which
        gets the same refusal in its own words, and a target that cannot
        report ``/api/ps`` (an Ollama-alike) is left to load models itself.
        """
        if job.route.embeds:
            # An embedding line of a batch: Ollama loads its model beside the
            # worker model, as for any embedding call; the worker model stays.
            return None
        wanted = canonical_model_name(job.model)
        last_seen = {canonical_model_name(m) for m in self._inventory.resident}
        if wanted == self.worker_model and (wanted in last_seen or self._unmanaged):
            # Draining: the model is where foreman left it. (If someone
            # unloaded it, the next poll shows that and it is loaded again.)
            return None
        try:
            resident = [canonical_model_name(m) for m in await self._inventory.refresh_resident()]
        except (UpstreamStatusError, ValueError) as e:
            if not self._unmanaged:
                log.warn(
                    "The target cannot list loaded models ({error}); foreman leaves loading to it",
                    error=describe_failure(e),
                )
            self._unmanaged = True
            self.worker_model = wanted
            return None
        except Exception as e:
            reason = describe_failure(e)
            return Attempt(
                Outcome.UNREACHABLE, None, unreachable_message(self._relay.target, reason)
            )
        self._unmanaged = False
        for model in resident:
            if model not in (wanted, self._embedder):
                failed = await self._unload(model)
                if failed is not None:
                    return failed
        if wanted not in resident:
            failed = await self._load(job)
            if failed is not None:
                return failed
        self.worker_model = wanted
        with contextlib.suppress(Exception):  # if ps fails, the next poll will tell
            await self._inventory.refresh_resident()
        return None

    def forget(self) -> None:
        """Stop trusting what is resident (after the target was away)."""
        self.worker_model = None
        self._unmanaged = False

    async def _unload(self, model: str) -> Attempt | None:
        log.info("Unloading {model} before a swap", model=model)
        body = json.dumps({"model": model, "keep_alive": 0}).encode()
        attempt = await self._relay.fetch(b"POST", b"/api/generate", body)
        if attempt.outcome is Outcome.UNREACHABLE:
            return attempt
        if attempt.outcome is Outcome.REFUSED:
            # Not fatal for the job: the load that follows may still fit.
            log.warn("Unloading {model} failed: {error}", model=model, error=attempt.error)
            return None
        self.unloads += 1
        if self.worker_model == model:
            self.worker_model = None
        return None

    async def _load(self, job: Job) -> Attempt | None:
        log.info("Loading {model} as the worker model", model=job.model)
        # Always a native call, whatever the job's dialect: only the native
        # API carries keep_alive, and a model loaded by an OpenAI or
        # Anthropic call would get Ollama's default five minutes.
        call: dict[str, Any] = {"model": job.model, "keep_alive": keep_alive_value(self.keep_alive)}
        route = job.route
        if route.loads_as_chat:
            call["messages"] = []
        attempt = await self._relay.fetch(b"POST", route.load_path, json.dumps(call).encode())
        if attempt.outcome is Outcome.UNREACHABLE:
            return attempt
        if attempt.outcome is Outcome.REFUSED:
            # The job's own call will meet the same answer and pass it on.
            log.info("Loading {model} was refused: {error}", model=job.model, error=attempt.error)
            return None
        self.loads += 1
        return None

    async def warm_embedder(self) -> None:
        """Load the embedding model and pin it forever; failures are only logged."""
        if not self.embed_model:
            return
        body = json.dumps({"model": self.embed_model, "input": [], "keep_alive": -1}).encode()
        attempt = await self._relay.fetch(b"POST", b"/api/embed", body)
        if attempt.outcome is Outcome.DELIVERED:
            log.info("Embedding model {model} is loaded and pinned", model=self.embed_model)
        else:
            log.warn(
                "Could not warm the embedding model {model}: {error}",
                model=self.embed_model,
                error=attempt.error,
            )
