"""``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings``.

Each handler validates the body in the order Ollama's handler does (so the
same bad request gets the same error), then asks the residency scheduler
for a runner. Nothing is written until the model is loaded, as with
Ollama. A :class:`_Call` follows the request from there: a parallel slot,
the paced token stream, and the client going away at any point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from foreman.testing._generation import (
    ReplyPlan,
    context_ids,
    count_tokens,
    format_error,
    normalize,
    plan_reply,
    prompt_token_count,
    raw_embedding,
)
from foreman.testing._gojson import dumps, dumps_line, duration_ns, float_array, rfc3339
from foreman.testing._http import (
    JSON_UTF8,
    NDJSON,
    error_body,
    go_quote,
    json_body,
    write_and_finish,
)
from foreman.testing._models import SimModel, full_name, is_valid_name
from foreman.testing._requests import (
    CHAT,
    EMBED,
    EMBEDDINGS,
    GENERATE,
    RequestError,
    Struct,
    check_options,
    decode,
)
from foreman.testing._residency import Lease, QueueFull
from foreman.testing._streaming import PACE, EventPump, _Pace

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

_log = Logger()

Chunk = dict[str, Any]


class _Call:
    """One inference request from arrival to its last byte (or its client leaving)."""

    def __init__(self, sim: SimulatedOllama, request: Request, model: SimModel, name: str) -> None:
        self.sim = sim
        self.request = request
        self.model = model
        #: The model name exactly as the client sent it; Ollama echoes it.
        self.name = name
        self.started = sim.clock.seconds()
        self.loaded_at = self.started
        self.eval_started = self.started
        self.lease: Lease | None = None
        self.waiting: Deferred[Any] | None = None
        self.pump: EventPump[Chunk] | None = None
        self.generating = False
        self.over = False

    def now(self) -> float:
        return self.sim.clock.seconds()

    # --- waiting for a runner, then a slot -------------------------------------

    def wait_for_runner(
        self, keep_alive: float | None, num_ctx: int | None, then: Callable[[], None]
    ) -> bytes | int:
        try:
            leased = self.sim.residency.request(self.model, keep_alive, num_ctx)
        except QueueFull as e:
            return error_body(self.request, 503, str(e))
        self.request.notifyFinish().addErrback(self._client_gone)
        self.waiting = leased

        def loaded(lease: Lease) -> None:
            self.waiting = None
            self.lease = lease
            self.loaded_at = self.now()
            then()

        leased.addCallback(loaded).addErrback(self._failed)
        return NOT_DONE_YET

    def generate(self, events: Callable[[], Iterator[Chunk | _Pace]], stream: bool,
                 merge: Callable[[list[Chunk]], Chunk]) -> None:
        assert self.lease is not None
        slot = self.lease.acquire_slot()
        self.waiting = slot

        def start(_: None) -> None:
            self.waiting = None
            self.eval_started = self.now()
            self.generating = True
            self.sim._generation_started()
            if stream:
                self.request.setHeader(b"content-type", NDJSON)
                self.pump = EventPump(self.sim.clock, events(), self._write_line,
                                      tokens_per_second=self.sim.tokens_per_second,
                                      on_finished=self._stream_finished)
                self.request.registerProducer(self.pump, True)
            else:
                chunks: list[Chunk] = []
                self.pump = EventPump(self.sim.clock, events(), chunks.append,
                                      tokens_per_second=self.sim.tokens_per_second,
                                      on_finished=lambda: self._whole_finished(merge(chunks)))
            self.pump.start()

        slot.addCallback(start).addErrback(self._failed)

    # --- finishing ----------------------------------------------------------------

    def _write_line(self, chunk: Chunk) -> None:
        self.request.write(dumps_line(chunk))

    def _stream_finished(self) -> None:
        self.request.unregisterProducer()
        if not self.request._disconnected:
            self.request.finish()
        self._end(completed=True)

    def _whole_finished(self, response: Chunk) -> None:
        self.respond(200, response)
        self._end(completed=True)

    def respond(self, status: int, value: object, content_type: bytes = JSON_UTF8) -> None:
        body = json_body(self.request, status, value, content_type)
        write_and_finish(self.request, body)

    def respond_raw_json(self, text: str) -> None:
        self.request.setHeader(b"content-type", JSON_UTF8)
        write_and_finish(self.request, text.encode("utf-8"))

    def done_without_generation(self) -> None:
        """Finished a load-only call, an error after load, or an embedding."""
        self._end(completed=False)

    def _end(self, *, completed: bool) -> None:
        if self.over:
            return
        self.over = True
        if self.generating:
            self.generating = False
            self.sim._generation_ended(completed=completed)
        if self.lease is not None:
            self.lease.release()

    def _client_gone(self, reason: Failure) -> None:
        if self.over:
            return
        self.sim._request_cancelled()
        if self.waiting is not None:
            self.waiting.cancel()
        if self.pump is not None:
            self.pump.stopProducing()
        self._end(completed=False)

    def _failed(self, reason: Failure) -> None:
        if reason.check(CancelledError):
            return
        _log.failure("simulated Ollama failed a request", reason)
        if not self.request.startedWriting:
            self.respond(500, {"error": reason.getErrorMessage()})
        elif not self.request._disconnected and not self.request.finished:
            self.request.finish()
        self._end(completed=False)

    # --- metrics --------------------------------------------------------------------

    def metrics(self, prompt_tokens: int, eval_tokens: int) -> Chunk:
        now = self.now()
        values = {
            "total_duration": duration_ns(now - self.started),
            "load_duration": duration_ns(self.loaded_at - self.started),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 0,
            "eval_count": eval_tokens,
            "eval_duration": duration_ns(now - self.eval_started),
        }
        # Go's omitempty drops zero metrics.
        return {key: value for key, value in values.items() if value}


# --- shared validation -------------------------------------------------------------


def _resolve_think(model: SimModel, think: bool | str | None, name: str) -> bool:
    """Thinking models think unless told not to; others refuse ``think: true``."""
    if model.thinking:
        return think is None or bool(think)
    if think:
        raise RequestError(400, f"{go_quote(name)} does not support thinking")
    return False


def _check_logprobs(req: dict[str, Any]) -> None:
    if not 0 <= req.get("top_logprobs", 0) <= 20:
        raise RequestError(400, "top_logprobs must be between 0 and 20")


def _find_model(sim: SimulatedOllama, name: str, *, missing_name: RequestError) -> SimModel:
    if not name.strip():
        raise missing_name
    if not is_valid_name(name):
        raise RequestError(400, "invalid model name")
    model = sim.library.get(name)
    if model is None:
        raise RequestError(404, f"model '{name}' not found")
    return model


def _decode(body: bytes, struct: Struct) -> dict[str, Any]:
    req = decode(body, struct)
    _check_logprobs(req)
    return req


def _num_predict(options: dict[str, Any]) -> int | None:
    value = options.get("num_predict")
    return value if isinstance(value, int) and value > 0 else None


# --- /api/chat -------------------------------------------------------------------


def chat(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = _decode(body, CHAT)
        name = req.get("model", "")
        model = _find_model(sim, name, missing_name=RequestError(400, "model is required"))
        messages = [m for m in req.get("messages") or [] if m is not None]
        keep_alive = req.get("keep_alive")
        if not messages and keep_alive == 0:
            sim.residency.expire(model)
            return json_body(request, 200, {
                "model": name, "created_at": rfc3339(sim.clock.seconds()),
                "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "unload",
            })
        think = _resolve_think(model, req.get("think"), name)
        tools = [t for t in req.get("tools") or [] if t is not None]
        if model.embedding_only:
            raise RequestError(400, f"{go_quote(name)} does not support chat")
        if tools and not model.tools:
            raise RequestError(400, f"{full_name(name)} does not support tools")
        options = check_options(req.get("options"))
    except RequestError as e:
        return error_body(request, e.status, e.message)

    call = _Call(sim, request, model, name)
    stream = req.get("stream") is not False
    roles = [(m.get("role") or "").lower() for m in messages]
    user_texts = [m.get("content") or "" for m, role in zip(messages, roles, strict=True)
                  if role == "user"]
    plan = plan_reply(
        source_text=user_texts[-1] if user_texts else
        (messages[-1].get("content") or "" if messages else ""),
        reply_tokens=sim.reply_tokens,
        num_predict=_num_predict(options),
        token_size=sim.token_size,
        think=think,
        tools=tools,
        answering_tool_result=bool(roles) and roles[-1] == "tool",
        format_value=req.get("format"),
    )
    prompt_tokens = prompt_token_count([m.get("content") or "" for m in messages])

    def loaded() -> None:
        if not messages:
            call.respond(200, {
                "model": name, "created_at": rfc3339(call.now()),
                "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "load",
            })
            call.done_without_generation()
            return
        if (problem := format_error(req.get("format"))) is not None:
            call.respond(500, {"error": problem},
                         b"application/json" if stream else JSON_UTF8)
            call.done_without_generation()
            return
        call.generate(lambda: _chat_events(call, plan, prompt_tokens), stream,
                      lambda chunks: _merge_chat(chunks, bool(tools)))

    return call.wait_for_runner(keep_alive, options.get("num_ctx"), loaded)


def _chat_events(call: _Call, plan: ReplyPlan, prompt_tokens: int) -> Iterator[Chunk | _Pace]:
    produced = 0
    for piece in plan.pieces():
        yield PACE
        produced += 1
        message: Chunk = {"role": "assistant", "content": piece.text if piece.kind == "content"
                          else ""}
        if piece.kind == "thinking":
            message["thinking"] = piece.text
        if piece.tool_calls:
            message["tool_calls"] = list(piece.tool_calls)
        yield {"model": call.name, "created_at": rfc3339(call.now()), "message": message,
               "done": False}
    yield {
        "model": call.name, "created_at": rfc3339(call.now()),
        "message": {"role": "assistant", "content": ""},
        "done": True, "done_reason": plan.done_reason,
        **call.metrics(prompt_tokens, produced),
    }


def _merge_chat(chunks: list[Chunk], tools_requested: bool) -> Chunk:
    final = dict(chunks[-1])
    message: Chunk = {
        "role": "assistant",
        "content": "".join(c["message"]["content"] for c in chunks),
    }
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    if thinking:
        message["thinking"] = thinking
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    if calls and tools_requested:
        message["tool_calls"] = calls
    final["message"] = message
    return final


# --- /api/generate ------------------------------------------------------------------


def generate(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = _decode(body, GENERATE)
        name = req.get("model", "")
        model = _find_model(sim, name,
                            missing_name=RequestError(404, f"model '{name}' not found"))
        prompt = req.get("prompt") or ""
        keep_alive = req.get("keep_alive")
        if not prompt and keep_alive == 0:
            sim.residency.expire(model)
            return json_body(request, 200, {
                "model": name, "created_at": rfc3339(sim.clock.seconds()),
                "response": "", "done": True, "done_reason": "unload",
            })
        raw = bool(req.get("raw"))
        if raw and (req.get("template") or req.get("system") or req.get("context")):
            raise RequestError(400, "raw mode does not support template, system, or context")
        think = _resolve_think(model, req.get("think"), name)
        if model.embedding_only:
            raise RequestError(400, f"{go_quote(name)} does not support generate")
        if req.get("suffix") and not model.insert:
            raise RequestError(400, f"{full_name(name)} does not support insert")
        options = check_options(req.get("options"))
    except RequestError as e:
        return error_body(request, e.status, e.message)

    call = _Call(sim, request, model, name)
    stream = req.get("stream") is not False
    plan = plan_reply(source_text=prompt, reply_tokens=sim.reply_tokens,
                      num_predict=_num_predict(options), token_size=sim.token_size,
                      think=think, format_value=req.get("format"))
    texts = [t for t in (req.get("system") or "", prompt) if t]
    prompt_tokens = prompt_token_count(texts) + len(req.get("context") or [])

    def loaded() -> None:
        if not prompt:
            call.respond(200, {"model": name, "created_at": rfc3339(call.now()),
                               "response": "", "done": True, "done_reason": "load"})
            call.done_without_generation()
            return
        if (problem := format_error(req.get("format"))) is not None:
            call.respond(500, {"error": problem},
                         b"application/json" if stream else JSON_UTF8)
            call.done_without_generation()
            return
        call.generate(lambda: _generate_events(call, plan, prompt_tokens, raw), stream,
                      _merge_generate)

    return call.wait_for_runner(keep_alive, options.get("num_ctx"), loaded)


def _generate_events(call: _Call, plan: ReplyPlan, prompt_tokens: int,
                     raw: bool) -> Iterator[Chunk | _Pace]:
    produced = 0
    for piece in plan.pieces():
        yield PACE
        produced += 1
        chunk: Chunk = {"model": call.name, "created_at": rfc3339(call.now()),
                        "response": piece.text if piece.kind == "content" else ""}
        if piece.kind == "thinking":
            chunk["thinking"] = piece.text
        chunk["done"] = False
        yield chunk
    final: Chunk = {"model": call.name, "created_at": rfc3339(call.now()), "response": "",
                    "done": True, "done_reason": plan.done_reason}
    if not raw:
        final["context"] = context_ids(plan.seed, prompt_tokens + produced)
    final.update(call.metrics(prompt_tokens, produced))
    yield final


def _merge_generate(chunks: list[Chunk]) -> Chunk:
    final = chunks[-1]
    merged: Chunk = {"model": final["model"], "created_at": final["created_at"],
                     "response": "".join(c["response"] for c in chunks)}
    thinking = "".join(c.get("thinking", "") for c in chunks)
    if thinking:
        merged["thinking"] = thinking
    merged.update({k: v for k, v in final.items() if k not in merged and k != "thinking"})
    return merged


# --- /api/embed and /api/embeddings --------------------------------------------------


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

    call = _Call(sim, request, model, name)

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
        metrics = {"total_duration": duration_ns(call.now() - call.started),
                   "load_duration": duration_ns(call.loaded_at - call.started),
                   "prompt_eval_count": tokens}
        text = (
            '{"model":' + dumps(name) + ',"embeddings":['
            + ",".join(float_array(v, 32) for v in vectors) + "]"
            + "".join(f',"{k}":{v}' for k, v in metrics.items() if v) + "}"
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

    call = _Call(sim, request, model, name)
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
