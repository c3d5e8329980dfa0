"""``/api/chat`` and ``/api/generate``.

Each handler validates the body in the order Ollama's handler does (so the
same bad request gets the same error, and nothing loads for it), then
hands the request to an :class:`~foreman.testing._call.InferenceCall`.
Replies come from :mod:`._generation`; the chunks here give them
Ollama's shapes, metrics and timestamps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

from foreman.testing._call import Chunk, InferenceCall
from foreman.testing._generation import (
    ReplyPlan,
    context_ids,
    plan_reply,
    prompt_token_count,
)
from foreman.testing._http import JSON_UTF8, error_body, go_quote, json_body
from foreman.testing._models import SimModel, full_name, is_valid_name
from foreman.testing._requests import CHAT, GENERATE, RequestError, Struct, check_options, decode
from foreman.testing._streaming import PACE, Pace
from foreman.wire.gojson import rfc3339
from foreman.wire.native_requests import format_error

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


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
            return json_body(
                request,
                200,
                {
                    "model": name,
                    "created_at": rfc3339(sim.wall()),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "unload",
                },
            )
        think = _resolve_think(model, req.get("think"), name)
        tools = [t for t in req.get("tools") or [] if t is not None]
        if model.embedding_only:
            raise RequestError(400, f"{go_quote(name)} does not support chat")
        if tools and not model.tools:
            raise RequestError(400, f"{full_name(name)} does not support tools")
        options = check_options(req.get("options"))
    except RequestError as e:
        return error_body(request, e.status, e.message)

    call = InferenceCall(sim, request, model, name)
    stream = req.get("stream") is not False
    roles = [(m.get("role") or "").lower() for m in messages]
    user_texts = [
        m.get("content") or "" for m, role in zip(messages, roles, strict=True) if role == "user"
    ]
    plan = plan_reply(
        source_text=user_texts[-1]
        if user_texts
        else (messages[-1].get("content") or "" if messages else ""),
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
            call.respond(
                200,
                {
                    "model": name,
                    "created_at": rfc3339(call.wall()),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                },
            )
            call.done_without_generation()
            return
        if (problem := format_error(req.get("format"))) is not None:
            call.respond(500, {"error": problem}, b"application/json" if stream else JSON_UTF8)
            call.done_without_generation()
            return
        call.generate(
            lambda: _chat_events(call, plan, prompt_tokens),
            stream,
            lambda chunks: _merge_chat(chunks, bool(tools)),
        )

    return call.wait_for_runner(keep_alive, options.get("num_ctx"), loaded)


def _chat_events(
    call: InferenceCall, plan: ReplyPlan, prompt_tokens: int
) -> Iterator[Chunk | Pace]:
    produced = 0
    for piece in plan.pieces():
        yield PACE
        produced += 1
        message: Chunk = {
            "role": "assistant",
            "content": piece.text if piece.kind == "content" else "",
        }
        if piece.kind == "thinking":
            message["thinking"] = piece.text
        if piece.tool_calls:
            message["tool_calls"] = list(piece.tool_calls)
        yield {
            "model": call.name,
            "created_at": rfc3339(call.wall()),
            "message": message,
            "done": False,
        }
    yield {
        "model": call.name,
        "created_at": rfc3339(call.wall()),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": plan.done_reason,
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
        model = _find_model(sim, name, missing_name=RequestError(404, f"model '{name}' not found"))
        prompt = req.get("prompt") or ""
        keep_alive = req.get("keep_alive")
        if not prompt and keep_alive == 0:
            sim.residency.expire(model)
            return json_body(
                request,
                200,
                {
                    "model": name,
                    "created_at": rfc3339(sim.wall()),
                    "response": "",
                    "done": True,
                    "done_reason": "unload",
                },
            )
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

    call = InferenceCall(sim, request, model, name)
    stream = req.get("stream") is not False
    plan = plan_reply(
        source_text=prompt,
        reply_tokens=sim.reply_tokens,
        num_predict=_num_predict(options),
        token_size=sim.token_size,
        think=think,
        format_value=req.get("format"),
    )
    texts = [t for t in (req.get("system") or "", prompt) if t]
    prompt_tokens = prompt_token_count(texts) + len(req.get("context") or [])

    def loaded() -> None:
        if not prompt:
            call.respond(
                200,
                {
                    "model": name,
                    "created_at": rfc3339(call.wall()),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                },
            )
            call.done_without_generation()
            return
        if (problem := format_error(req.get("format"))) is not None:
            call.respond(500, {"error": problem}, b"application/json" if stream else JSON_UTF8)
            call.done_without_generation()
            return
        call.generate(
            lambda: _generate_events(call, plan, prompt_tokens, raw), stream, _merge_generate
        )

    return call.wait_for_runner(keep_alive, options.get("num_ctx"), loaded)


def _generate_events(
    call: InferenceCall, plan: ReplyPlan, prompt_tokens: int, raw: bool
) -> Iterator[Chunk | Pace]:
    produced = 0
    for piece in plan.pieces():
        yield PACE
        produced += 1
        chunk: Chunk = {
            "model": call.name,
            "created_at": rfc3339(call.wall()),
            "response": piece.text if piece.kind == "content" else "",
        }
        if piece.kind == "thinking":
            chunk["thinking"] = piece.text
        chunk["done"] = False
        yield chunk
    final: Chunk = {
        "model": call.name,
        "created_at": rfc3339(call.wall()),
        "response": "",
        "done": True,
        "done_reason": plan.done_reason,
    }
    if not raw:
        final["context"] = context_ids(plan.seed, prompt_tokens + produced)
    final.update(call.metrics(prompt_tokens, produced))
    yield final


def _merge_generate(chunks: list[Chunk]) -> Chunk:
    final = chunks[-1]
    merged: Chunk = {
        "model": final["model"],
        "created_at": final["created_at"],
        "response": "".join(c["response"] for c in chunks),
    }
    thinking = "".join(c.get("thinking", "") for c in chunks)
    if thinking:
        merged["thinking"] = thinking
    merged.update({k: v for k, v in final.items() if k not in merged and k != "thinking"})
    return merged
