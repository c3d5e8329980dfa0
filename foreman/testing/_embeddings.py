"""``/api/embed`` and the legacy ``/api/embeddings``.

Vectors are a hash of model and text: deterministic, different per model,
``embedding_length`` long. ``/api/embed`` L2-normalises them (and again
after cutting to ``dimensions``) as Ollama does; the legacy endpoint returns
the runner's raw vector. Embeddings load their model like any request but
do not wait for a generation slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web.server import Request

from foreman.testing._call import InferenceCall
from foreman.testing._generation import count_tokens, normalize, raw_embedding
from foreman.testing._http import error_body, go_quote
from foreman.testing._models import is_valid_name
from foreman.testing._requests import EMBED, EMBEDDINGS, RequestError, check_options, decode
from foreman.wire.gojson import dumps, duration_ns, float_array

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


def _embed_inputs(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RequestError(400, "invalid input type")


def embed(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = decode(body, EMBED)
        name = req.get("model", "")
        if not name.strip():
            raise RequestError(404, f"model '{name}' not found")
        if not is_valid_name(name):
            raise RequestError(400, "invalid model name")
        inputs = _embed_inputs(req.get("input"))
        model = sim.library.get(name)
        if model is None:
            raise RequestError(404, f"model {go_quote(name)} not found, try pulling it first")
        options = check_options(req.get("options"))
    except RequestError as e:
        return error_body(request, e.status, e.message)

    call = InferenceCall(sim, request, model, name)

    def loaded() -> None:
        assert call.lease is not None
        if not inputs:
            call.respond(200, {"model": name, "embeddings": []})
            call.done_without_generation()
            return
        limit = call.lease.runner.num_ctx
        vectors, tokens = [], 0
        for text in inputs:
            count = count_tokens(text) + 2  # BOS and EOS
            if count > limit:
                if req.get("truncate") is False:
                    call.respond(400, {"error": "the input length exceeds the context length"})
                    call.done_without_generation()
                    return
                text, count = " ".join(text.split()[: max(limit - 2, 0)]), limit
            vector = normalize(raw_embedding(model.key, text, model.embedding_length))
            dimensions = req.get("dimensions") or 0
            if 0 < dimensions < len(vector):
                vector = normalize(vector[:dimensions])
            vectors.append(vector)
            tokens += count
        metrics = {
            "total_duration": duration_ns(call.now() - call.started),
            "load_duration": duration_ns(call.loaded_at - call.started),
            "prompt_eval_count": tokens,
        }
        text = (
            '{"model":'
            + dumps(name)
            + ',"embeddings":['
            + ",".join(float_array(v, 32) for v in vectors)
            + "]"
            + "".join(f',"{k}":{v}' for k, v in metrics.items() if v)
            + "}"
        )
        call.respond_raw_json(text)
        call.done_without_generation()

    return call.wait_for_runner(req.get("keep_alive"), options.get("num_ctx"), loaded)


def embeddings(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = decode(body, EMBEDDINGS)
        name = req.get("model", "")
        if not name.strip():
            raise RequestError(400, "model is required")
        if not is_valid_name(name):
            raise RequestError(400, "invalid model name")
        model = sim.library.get(name)
        if model is None:
            raise RequestError(404, f"model {go_quote(name)} not found, try pulling it first")
        options = check_options(req.get("options"))
    except RequestError as e:
        return error_body(request, e.status, e.message)

    call = InferenceCall(sim, request, model, name)
    prompt = req.get("prompt") or ""

    def loaded() -> None:
        if not prompt:
            call.respond(200, {"embedding": []})
        else:
            # The legacy endpoint returns the runner's vector as is: not normalised.
            vector = raw_embedding(model.key, prompt, model.embedding_length)
            call.respond_raw_json('{"embedding":' + float_array(vector, 64) + "}")
        call.done_without_generation()

    return call.wait_for_runner(req.get("keep_alive"), options.get("num_ctx"), loaded)
