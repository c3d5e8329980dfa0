"""``SimulatedOllama``: the simulator's state, its settings and what tests observe."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.web.resource import IResource
from twisted.web.server import Site

from foreman.testing._models import DEFAULT_MODELS, Library, SimModel, display_shortest
from foreman.testing._residency import Residency
from foreman.testing._streaming import SharedBandwidth

if TYPE_CHECKING:
    from foreman.testing._resource import OllamaResource


@attrs.frozen
class RecordedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    #: Header values by lower-cased name, in arrival order.
    headers: Mapping[str, tuple[str, ...]]
    body: bytes
    uri: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


class SimulatedOllama:
    """A simulated Ollama server: the native API, a scheduler, and counters.

    All time — load latency, token pacing, keep-alive expiry — runs on
    ``clock`` (default: the global reactor), so tests can drive it with
    ``twisted.internet.task.Clock``. The calendar times it answers with (a
    reply's ``created_at``, ``/api/ps``'s ``expires_at``, a pulled model's
    ``modified_at``) are read from ``wall`` (default: ``clock``'s seconds),
    for a clock that is not a calendar (foreman's daemon runs its reactor
    on a monotonic clock). Serve it with :meth:`resource` (any
    ``twisted.web`` site, ``treq.testing.StubTreq``) or :meth:`listen`.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        models: Sequence[SimModel] = DEFAULT_MODELS,
        tokens_per_second: float = 0.0,
        reply_tokens: int = 12,
        token_size: int = 0,
        max_loaded_models: int = 3,
        num_parallel: int = 1,
        max_queue: int = 512,
        default_keep_alive: float = 300.0,
        version: str = "0.13.0",
        check_host: bool = True,
        default_num_ctx: int = 4096,
        max_recorded_requests: int = 10_000,
        shared_bandwidth: bool = False,
        memory_bytes: int | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.clock: IReactorTime = clock
        #: Seconds since the epoch, for the calendar times in its answers.
        self.wall: Callable[[], float] = clock.seconds if wall is None else wall
        #: 0 = as fast as the transport accepts; otherwise tokens per simulated second.
        self.tokens_per_second = tokens_per_second
        #: With pacing on, all generations in progress (any model) share
        #: ``tokens_per_second``: with N of them each gets 1/N, as on one
        #: bandwidth-bound GPU. Off: each generation gets the full rate.
        self.shared_bandwidth = shared_bandwidth
        self._bandwidth: SharedBandwidth | None = None
        #: Tokens in a reply unless ``options.num_predict`` sets a count.
        self.reply_tokens = reply_tokens
        #: 0 = natural words; N = every token is exactly N characters.
        self.token_size = token_size
        self.version = version
        self.check_host = check_host
        self.library = Library(models)
        self.residency = Residency(
            clock,
            max_loaded_models=max_loaded_models,
            num_parallel=num_parallel,
            max_queue=max_queue,
            default_keep_alive=math.inf if default_keep_alive < 0 else default_keep_alive,
            default_num_ctx=default_num_ctx,
            memory_bytes=memory_bytes,
            on_load=self._model_loaded,
            on_unload=self._model_unloaded,
        )
        self.loads = 0
        self.load_history: list[str] = []
        self.unloads = 0
        self.active_generations = 0
        self.max_active_generations = 0
        self.cancelled_requests = 0
        self.completed_generations = 0
        self.requests: list[RecordedRequest] = []
        #: ``requests`` keeps at most about this many of the latest requests.
        self.max_recorded_requests = max_recorded_requests
        self._resource: OllamaResource | None = None
        #: Where the /v1 dialects' "random" ids come from (``chatcmpl-<n>``,
        #: ``msg_<hex>``): seeded, so a run is reproducible.
        self.id_random = random.Random(0x011A4A)

    # --- serving ------------------------------------------------------------

    def resource(self) -> IResource:
        """A ``twisted.web`` resource serving the whole API (one per simulator)."""
        if self._resource is None:
            from foreman.testing._resource import OllamaResource

            self._resource = OllamaResource(self)
        return self._resource

    def site(self, reactor: IReactorTime | None = None) -> Site:
        """A ``Site`` for :meth:`resource` (no idle timeout, no access log)."""
        # Go reads a body only as its handler asks: Twisted must not parse
        # forms itself (a malformed one would be its bare 400, then a hang-up).
        site = Site(self.resource(), reactor=reactor, timeout=None, parsePOSTFormSubmission=False)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        return site

    def listen(
        self, endpoint: str | IStreamServerEndpoint, reactor: Any = None
    ) -> Deferred[IListeningPort]:
        """Listen on ``endpoint`` (e.g. ``"tcp:0:interface=127.0.0.1"``)."""
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        server = serverFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
        result: Deferred[IListeningPort] = server.listen(self.site(reactor))
        return result

    # --- observing ----------------------------------------------------------

    def loaded_models(self) -> list[str]:
        """Names of the models loaded now (not those still loading), in load order."""
        return [display_shortest(r.model.name) for r in self.residency.runners() if r.ready]

    def installed_models(self) -> list[SimModel]:
        return self.library.all()

    def add_model(self, model: SimModel) -> None:
        """Install (or replace) a model."""
        self.library.add(model)

    def reset_counters(self) -> None:
        """Zero the counters and forget recorded requests (live state is kept)."""
        self.loads = 0
        self.load_history = []
        self.unloads = 0
        self.max_active_generations = self.active_generations
        self.cancelled_requests = 0
        self.completed_generations = 0
        self.requests = []

    def shutdown(self) -> None:
        """Stop every timer and forget loaded models (for tests on a real reactor)."""
        self.residency.shutdown()

    # --- hooks for the HTTP surface -------------------------------------------

    def _model_loaded(self, model: SimModel) -> None:
        self.loads += 1
        self.load_history.append(display_shortest(model.name))

    def _model_unloaded(self, model: SimModel) -> None:
        self.unloads += 1

    def _bandwidth_for_generation(self) -> SharedBandwidth | None:
        """The rate a new generation shares, or ``None`` for a rate of its own."""
        if not self.shared_bandwidth or self.tokens_per_second <= 0:
            return None
        current = self._bandwidth
        if current is None or (
            current.tokens_per_second != self.tokens_per_second and current.members == 0
        ):
            current = self._bandwidth = SharedBandwidth(self.clock, self.tokens_per_second)
        return current

    def _generation_started(self) -> None:
        self.active_generations += 1
        self.max_active_generations = max(self.max_active_generations, self.active_generations)

    def _generation_ended(self, *, completed: bool) -> None:
        self.active_generations -= 1
        if completed:
            self.completed_generations += 1

    def _request_cancelled(self) -> None:
        self.cancelled_requests += 1
