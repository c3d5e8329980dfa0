"""Ollama's OpenAI Responses dialect: ``POST /v1/responses``, stateless.

As in Ollama (``middleware/openai.go`` ``ResponsesMiddleware``,
``openai/responses.go``): the request becomes an ``/api/chat`` body, and
the native chat output becomes one ``response`` object or the named SSE
events ``response.created``, ``response.in_progress``, the output items'
events, and ``response.completed``. Event payloads are Go maps, so their
keys are sorted; the non-streamed body is a Go struct, in field order.
Nothing is stored: ``previous_response_id`` and ``conversation`` are not
followed, and a ``web_search`` tool is only offered to the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

from foreman.testing._dialect import (
    EVENT_STREAM,
    JSON,
    Chunk,
    NativeHandler,
    bind,
    go_number,
    random_int,
    run_native,
    unix_seconds,
)
from foreman.testing._openai import (
    OpenAIWriter,
    encoded,
    openai_tool_calls,
    refuse,
)
from foreman.testing._openai_requests import cap_reply
from foreman.testing._requests import (
    RequestError,
)
from foreman.testing._responses_requests import (
    RESPONSES_REQUEST,
    from_responses_request,
    sorted_map,
)
from foreman.testing._sse import event_frame

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama


# --- re-encoding the response ----------------------------------------------------------------


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesWriter(OpenAIWriter):
    """``ResponsesWriter`` and its ``ResponsesStreamConverter``."""

    def __init__(
        self,
        request: Request,
        sim: SimulatedOllama,
        req: dict[str, Any],
        response_id: str,
        item_id: str,
    ) -> None:
        super().__init__(request)
        self.sim = sim
        self.req = req
        self.stream = bool(req.get("stream"))
        self.id = response_id
        self.item_id = item_id
        self.sequence = 0
        self.first_write = True
        self.output_index = 0
        self.content_started = False
        self.tool_calls_sent = False
        self.text = ""
        self.thinking = ""
        self.reasoning_id = ""
        self.completed_items: list[dict[str, Any]] = []

    def response(self, chunk: Chunk) -> bytes:
        if not self.stream:
            self.content_type(JSON)
            return encoded(self._body(chunk))
        self.content_type(EVENT_STREAM)
        return b"".join(event_frame(name, data) for name, data in self._events(chunk))

    # --- the non-streamed body (a Go struct: fields in order) ---

    def _echo(self) -> dict[str, Any]:
        req = self.req
        tools = []
        for tool in req.get("tools") or []:
            tool = tool or {}
            echoed = {
                "type": tool.get("type", ""),
                "name": tool.get("name", ""),
                "description": tool.get("description"),
                "strict": tool.get("strict"),
                "parameters": sorted_map(tool.get("parameters")),
            }
            if tool.get("tools"):
                echoed["tools"] = tool["tools"]
            tools.append(echoed)
        text_format = (req.get("text") or {}).get("format")
        reasoning = req.get("reasoning") or {}
        return {"tools": tools, "text_format": text_format, "reasoning": reasoning}

    def _body(self, chunk: Chunk) -> dict[str, Any]:
        """``ToResponse``, with ``completed_at`` set by the writer."""
        req = self.req
        message = chunk.get("message") or {}
        output: list[dict[str, Any]] = []
        if message.get("thinking"):
            output.append(
                {
                    "id": f"rs_{self.id}",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": message["thinking"]}],
                    "encrypted_content": message["thinking"],
                }
            )
        calls = openai_tool_calls(message.get("tool_calls"))
        if calls:
            for i, call in enumerate(calls):
                output.append(
                    {
                        "id": f"fc_{self.id}_{i}",
                        "type": "function_call",
                        "status": "completed",
                        "call_id": call["id"],
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                    }
                )
        else:
            output.append(
                {
                    "id": self.item_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [_output_text(message.get("content", ""))],
                }
            )
        echo = self._echo()
        text_format: dict[str, Any] = {"type": "text"}
        if echo["text_format"] is not None:
            given = echo["text_format"]
            text_format = {"type": given.get("type", "")}
            for key in ("name", "schema", "strict"):
                if given.get(key):
                    text_format[key] = given[key]
        reasoning = echo["reasoning"]
        reasoning_out = None
        if reasoning.get("effort") or reasoning.get("summary"):
            reasoning_out = {k: reasoning[k] for k in ("effort", "summary") if reasoning.get(k)}
        prompt, produced = chunk.get("prompt_eval_count", 0), chunk.get("eval_count", 0)
        created_at = chunk.get("created_at")
        return {
            "id": self.id,
            "object": "response",
            "created_at": unix_seconds(created_at) if created_at else 0,
            "completed_at": int(self.sim.wall()),
            "status": "completed",
            "incomplete_details": None,
            "model": req.get("model", ""),
            "previous_response_id": None,
            "instructions": req.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": echo["tools"],
            "tool_choice": "auto",
            "truncation": req.get("truncation", "disabled"),
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": go_number(req.get("top_p", 1.0)),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": go_number(req.get("temperature", 1.0)),
            "reasoning": reasoning_out,
            "usage": {
                "input_tokens": prompt,
                "output_tokens": produced,
                "total_tokens": prompt + produced,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(req.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    # --- the stream (Go maps: keys sorted) ---

    def _event(self, name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = {**data, "type": name, "sequence_number": self.sequence}
        self.sequence += 1
        return name, sorted_map(data)

    def _response_object(
        self, status: str, output: list[Any], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        req = self.req
        echo = self._echo()
        text_format: dict[str, Any] = {"type": "text"}
        if echo["text_format"] is not None:
            given = echo["text_format"]
            text_format = {"type": given.get("type", "")}
            for key in ("name", "schema"):
                if given.get(key):
                    text_format[key] = given[key]
            if "strict" in given:
                text_format["strict"] = given["strict"]
        reasoning = echo["reasoning"]
        reasoning_out = None
        if reasoning.get("effort") or reasoning.get("summary"):
            reasoning_out = {
                "effort": reasoning.get("effort") or None,
                "summary": reasoning.get("summary") or None,
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(self.sim.wall()),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": req.get("model", ""),
            "previous_response_id": None,
            "instructions": req.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": echo["tools"],
            "tool_choice": "auto",
            "truncation": req.get("truncation", "disabled"),
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": go_number(req.get("top_p", 1.0)),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": go_number(req.get("temperature", 1.0)),
            "reasoning": reasoning_out,
            "usage": usage,
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(req.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _finish_reasoning(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.reasoning_id:
            return []
        item = {
            "id": self.reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": self.thinking}],
            "encrypted_content": self.thinking,
        }
        self.completed_items.append(item)
        events = [
            self._event(
                "response.reasoning_summary_text.done",
                {
                    "item_id": self.reasoning_id,
                    "output_index": self.output_index,
                    "summary_index": 0,
                    "text": self.thinking,
                },
            ),
            self._event(
                "response.output_item.done", {"output_index": self.output_index, "item": item}
            ),
        ]
        self.thinking, self.reasoning_id = "", ""
        self.output_index += 1
        return events

    def _message_item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [_output_text(self.text)] if status == "completed" else [],
        }

    def _events(self, chunk: Chunk) -> list[tuple[str, dict[str, Any]]]:
        """``ResponsesStreamConverter.Process``."""
        events: list[tuple[str, dict[str, Any]]] = []
        message = chunk.get("message") or {}
        if self.first_write:
            self.first_write = False
            for name in ("response.created", "response.in_progress"):
                events.append(
                    self._event(name, {"response": self._response_object("in_progress", [], None)})
                )
        if thinking := message.get("thinking") or "":
            if not self.reasoning_id:
                self.reasoning_id = f"rs_{random_int(self.sim, 999999)}"
                events.append(
                    self._event(
                        "response.output_item.added",
                        {
                            "output_index": self.output_index,
                            "item": {"id": self.reasoning_id, "type": "reasoning", "summary": []},
                        },
                    )
                )
            self.thinking += thinking
            events.append(
                self._event(
                    "response.reasoning_summary_text.delta",
                    {
                        "item_id": self.reasoning_id,
                        "output_index": self.output_index,
                        "summary_index": 0,
                        "delta": thinking,
                    },
                )
            )
        calls = openai_tool_calls(message.get("tool_calls"))
        if calls:
            events += self._finish_reasoning()
            for i, call in enumerate(calls):
                index = self.output_index + i
                item_id = f"fc_{random_int(self.sim, 999999)}_{i}"
                item = {
                    "id": item_id,
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
                self.completed_items.append(item)
                arguments = call["function"]["arguments"]
                events += [
                    self._event(
                        "response.output_item.added",
                        {
                            "output_index": index,
                            "item": {**item, "status": "in_progress", "arguments": ""},
                        },
                    ),
                    self._event(
                        "response.function_call_arguments.delta",
                        {"item_id": item_id, "output_index": index, "delta": arguments},
                    ),
                    self._event(
                        "response.function_call_arguments.done",
                        {"item_id": item_id, "output_index": index, "arguments": arguments},
                    ),
                    self._event("response.output_item.done", {"output_index": index, "item": item}),
                ]
            self.output_index += len(calls)
            self.tool_calls_sent = True
        content = message.get("content") or ""
        if not calls and not self.tool_calls_sent and content:
            events += self._finish_reasoning()
            if not self.content_started:
                self.content_started = True
                events.append(
                    self._event(
                        "response.output_item.added",
                        {
                            "output_index": self.output_index,
                            "item": self._message_item("in_progress"),
                        },
                    )
                )
                events.append(
                    self._event(
                        "response.content_part.added",
                        {
                            "item_id": self.item_id,
                            "output_index": self.output_index,
                            "content_index": 0,
                            "part": _output_text(""),
                        },
                    )
                )
            self.text += content
            events.append(
                self._event(
                    "response.output_text.delta",
                    {
                        "item_id": self.item_id,
                        "output_index": self.output_index,
                        "content_index": 0,
                        "delta": content,
                        "logprobs": [],
                    },
                )
            )
        if chunk.get("done"):
            events += self._completion(chunk)
        return events

    def _completion(self, chunk: Chunk) -> list[tuple[str, dict[str, Any]]]:
        events = self._finish_reasoning()
        where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        if not self.tool_calls_sent and self.content_started:
            events += [
                self._event(
                    "response.output_text.done", {**where, "text": self.text, "logprobs": []}
                ),
                self._event(
                    "response.content_part.done", {**where, "part": _output_text(self.text)}
                ),
                self._event(
                    "response.output_item.done",
                    {"output_index": self.output_index, "item": self._message_item("completed")},
                ),
            ]
        output: list[Any] = list(self.completed_items)
        if self.content_started:
            output.append(self._message_item("completed"))
        prompt, produced = chunk.get("prompt_eval_count", 0), chunk.get("eval_count", 0)
        usage = {
            "input_tokens": prompt,
            "output_tokens": produced,
            "total_tokens": prompt + produced,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        response = self._response_object("completed", output, usage)
        response["completed_at"] = int(self.sim.wall())
        events.append(self._event("response.completed", {"response": response}))
        return events


def responses(native: NativeHandler) -> NativeHandler:
    """``ResponsesMiddleware`` in front of the native chat handler."""

    def handle(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
        try:
            req = bind(body, RESPONSES_REQUEST, "openai")
            converted = from_responses_request(req)
        except RequestError as e:
            return refuse(request, e)
        writer = ResponsesWriter(
            request,
            sim,
            req,
            f"resp_{random_int(sim, 999999)}",
            f"msg_{random_int(sim, 999999)}",
        )
        if req.get("stream"):
            request.setHeader(b"content-type", EVENT_STREAM)
            request.setHeader(b"cache-control", b"no-cache")
            if not request.responseHeaders.hasHeader(b"connection"):
                request.setHeader(b"connection", b"keep-alive")
        return run_native(sim, request, native, cap_reply(sim, converted), writer)

    return handle
