"""One box's simulated Ollama for ``bench/fleet.py``, in a process of its own.

    python bench/_fleet_ollama.py --listen tcp:PORT:interface=127.0.0.1 \\
        --load-seconds 1.0 --tokens-per-second 50 --reply-tokens 20

``python -m foreman.testing``'s simulator and options, with the four chat
models of :data:`MODEL_NAMES` installed (two of them ``bench/_simulator.py``'s,
not built-in models), or those ``--only a,b`` names, one loaded at a time
(``--max-loaded-models 1`` unless told otherwise), each model's load taking
``--load-seconds`` or its own time in ``--loads a=1.5,b=2`` if named there,
and one more path:
``GET /bench/record`` answers what it did as JSON: its loads, in order, and
the model of every chat it answered, in order (foreman's model loads, chats
without messages, left out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from bench._simulator import BIG_MODELS
from foreman.testing import SimulatedOllama
from foreman.testing.__main__ import build_simulator, parse_args
from foreman.wire.model_names import canonical_model_name

#: The chat models of the benchmark's batch: two built-in ones and two of
#: ``bench/_simulator.py``'s big models; none of them thinks (a thinking model's
#: answer takes longer, and every job here should take the same time).
MODEL_NAMES = ("llama3.2", "gemma3:12b", "mistral-small3.2:24b", "gemma3:27b")
EXTRA_MODELS = {model.name: model for model in BIG_MODELS}


def chats(sim: SimulatedOllama) -> list[str]:
    """The model of every chat with messages the simulator received, in order."""
    served = []
    for request in sim.requests:
        if request.path != "/api/chat":
            continue
        try:
            document = json.loads(request.body)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("messages"):
            served.append(str(document.get("model")))
    return served


class Root(Resource):
    """The simulator's API, and ``/bench/record``."""

    isLeaf = True

    def __init__(self, sim: SimulatedOllama) -> None:
        super().__init__()
        self._sim = sim
        self._api: Any = sim.resource()

    def render(self, request: Request) -> bytes | int:
        if request.path != b"/bench/record":
            result: bytes | int = self._api.render(request)
            return result
        sim = self._sim
        record = {
            "loads": sim.loads,
            "load_history": sim.load_history,
            "chats": chats(sim),
            "completed_generations": sim.completed_generations,
            "max_active_generations": sim.max_active_generations,
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(record).encode()


def serve(reactor: Any, argv: list[str]) -> Deferred[None]:
    if not any(a.startswith("--max-loaded-models") for a in argv):
        argv = [*argv, "--max-loaded-models", "1"]
    wanted = list(MODEL_NAMES)
    if "--only" in argv:
        at = argv.index("--only")
        wanted = argv[at + 1].split(",")
        argv = argv[:at] + argv[at + 2 :]
    loads: dict[str, float] = {}
    if "--loads" in argv:
        at = argv.index("--loads")
        for each in argv[at + 1].split(","):
            name, _, seconds = each.partition("=")
            loads[canonical_model_name(name)] = float(seconds)
        argv = argv[:at] + argv[at + 2 :]
    options = parse_args(argv)
    sim = build_simulator(options, reactor)
    for name in wanted:
        extra = EXTRA_MODELS.get(name)
        if extra is not None:
            if options.load_seconds is not None:
                extra = attrs.evolve(extra, load_seconds=options.load_seconds)
            sim.add_model(extra)
    keep = {canonical_model_name(name) for name in wanted}
    for model in sim.installed_models():
        if model.key not in keep:
            sim.library.remove(model.name)
        elif model.key in loads:
            sim.add_model(attrs.evolve(model, load_seconds=loads[model.key]))
    resource: IResource = Root(sim)
    site = Site(resource, timeout=None, parsePOSTFormSubmission=False)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    listening: Deferred[IListeningPort] = serverFromString(reactor, options.listen).listen(site)
    return listening.addCallback(lambda port: Deferred())  # until SIGTERM


if __name__ == "__main__":
    react(serve, (sys.argv[1:],))
