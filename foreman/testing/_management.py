"""Model management: pull, push, create, copy, delete and blobs — shape-faithful, instant.

There is no registry behind the simulator: any valid name can be pulled
(a known library model keeps its description, anything else becomes a
generic 1 GB llama), pushes always reach the "registry", and progress is
reported in Ollama's status lines without taking simulated time.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import attrs
from twisted.web.server import NOT_DONE_YET, Request

from foreman.testing._http import NDJSON, empty_body, error_body, go_quote, json_body
from foreman.testing._models import DEFAULT_MODELS, SimModel, display_shortest, is_valid_name
from foreman.testing._requests import COPY, CREATE, DELETE, PULL, PUSH, RequestError, decode
from foreman.wire.gojson import dumps_line
from foreman.wire.model_names import canonical_model_name

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

Status = dict[str, Any]

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_GENERIC_SIZE = 1_000_000_000


def _stream_statuses(
    request: Request, statuses: list[Status], stream: bool, error: str | None = None
) -> bytes | int:
    """Answer like Ollama's ``streamResponse`` / ``waitForStream``."""
    if not stream:
        if error is not None:
            return error_body(request, 500, error, b"application/json")
        return json_body(request, 200, statuses[-1], b"application/json")
    request.setHeader(b"content-type", NDJSON)
    for status in statuses:
        request.write(dumps_line(status))
    if error is not None:
        request.write(dumps_line({"error": error}))
    request.finish()
    return NOT_DONE_YET


def _layers(model: SimModel) -> list[tuple[str, int]]:
    """The blobs a model is made of: weights, then template, license, params, config."""

    def small(kind: str, size: int) -> tuple[str, int]:
        return "sha256:" + hashlib.sha256(f"{kind}:{model.key}".encode()).hexdigest(), size

    return [
        (model.layer_digest, model.size),
        small("template", 1429),
        small("license", 7711),
        small("params", 96),
        small("config", 561),
    ]


def _manifest_path(name: str) -> str:
    short = display_shortest(name)
    base, _, tag = short.rpartition(":")
    if "/" not in base:
        base = "library/" + base
    if base.count("/") == 1:
        base = "registry.ollama.ai/" + base
    return f"/root/.ollama/models/manifests/{base}/{tag}"


def _library_model(sim: SimulatedOllama, name: str) -> SimModel:
    """What a pull of ``name`` installs."""
    now = sim.wall()
    short = display_shortest(name)
    for known in (*sim.library.all(), *DEFAULT_MODELS):
        if known.key == canonical_model_name(short):
            return attrs.evolve(known, name=short, modified_at=now)
    return SimModel(name=short, size=_GENERIC_SIZE, modified_at=now)


def _pull_statuses(sim: SimulatedOllama, name: str) -> tuple[SimModel, list[Status]]:
    existing = sim.library.get(name)
    model = _library_model(sim, name)
    statuses: list[Status] = [{"status": "pulling manifest"}]
    for digest, size in _layers(model):
        steps = [size] if existing is not None else [0, size // 2, size]
        statuses.extend(
            {
                "status": f"pulling {digest[7:19]}",
                "digest": digest,
                "total": size,
                "completed": done,
            }
            if done
            else {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size}
            for done in steps
        )
    statuses += [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    sim.library.blobs.update(digest for digest, _ in _layers(model))
    return model, statuses


def pull(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = decode(body, PULL)
    except RequestError as e:
        return error_body(request, e.status, e.message)
    name = req.get("model") or req.get("name") or ""
    if not is_valid_name(name):
        return error_body(request, 400, "invalid model name")
    model, statuses = _pull_statuses(sim, name)
    sim.library.add(model)
    return _stream_statuses(request, statuses, req.get("stream") is not False)


def push(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = decode(body, PUSH)
    except RequestError as e:
        return error_body(request, e.status, e.message)
    name = req.get("model") or req.get("name") or ""
    if not name:
        return error_body(request, 400, "model is required")
    stream = req.get("stream") is not False
    statuses: list[Status] = [{"status": "retrieving manifest"}]
    model = sim.library.get(name)
    if model is None:
        statuses.append({"status": "couldn't retrieve manifest"})
        return _stream_statuses(
            request, statuses, stream, f"open {_manifest_path(name)}: no such file or directory"
        )
    for digest, size in _layers(model):
        statuses.append(
            {
                "status": f"pushing {digest[7:19]}",
                "digest": digest,
                "total": size,
                "completed": size,
            }
        )
    statuses += [{"status": "pushing manifest"}, {"status": "success"}]
    return _stream_statuses(request, statuses, stream)


def _info_overrides(info: dict[str, Any] | None) -> dict[str, Any]:
    fields = {
        "model_family": "family",
        "parameter_size": "parameter_size",
        "quantization_level": "quantization_level",
    }
    overrides: dict[str, Any] = {}
    for key, field in fields.items():
        value = (info or {}).get(key)
        if value is not None:
            if not isinstance(value, str):
                raise RequestError(400, f'info field "{key}" must be a string')
            overrides[field] = value
    for key in ("context_length", "embedding_length"):
        value = (info or {}).get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(400, f'info field "{key}" must be a number')
            if value < 0 or int(value) != value:
                raise RequestError(400, f'info field "{key}" must be a non-negative integer')
            overrides[key] = int(value)
    return overrides


def create(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes | int:
    try:
        req = decode(body, CREATE)
        for mapping in (req.get("files") or {}, req.get("adapters") or {}):
            if any(not digest for digest in mapping.values()):
                raise RequestError(400, "invalid digest format")
        name = req.get("model") or req.get("name") or ""
        if not is_valid_name(name):
            raise RequestError(400, "invalid model name")
    except RequestError as e:
        return error_body(request, e.status, e.message)
    stream = req.get("stream") is not False
    # From here on Ollama works in a goroutine: its errors carry a plain
    # "application/json" (it never writes before failing here).
    try:
        base, statuses = _create_base(sim, req, name)
        overrides = _info_overrides(req.get("info"))
    except RequestError as e:
        return error_body(request, e.status, e.message, b"application/json")
    model = attrs.evolve(base, name=display_shortest(name), modified_at=sim.wall(), **overrides)
    statuses += [{"status": f"using existing layer {digest}"} for digest, _ in _layers(base)[:2]]
    for field in ("template", "system", "license", "parameters", "messages"):
        if req.get(field):
            digest = hashlib.sha256(f"{field}:{req[field]!r}".encode()).hexdigest()
            statuses.append({"status": f"creating new layer sha256:{digest}"})
    statuses += [{"status": "writing manifest"}, {"status": "success"}]
    sim.library.add(model)
    sim.library.blobs.update(digest for digest, _ in _layers(model))
    return _stream_statuses(request, statuses, stream)


def _create_base(
    sim: SimulatedOllama, req: dict[str, Any], name: str
) -> tuple[SimModel, list[Status]]:
    """The model a create builds on, and the statuses getting it produced."""
    source = req.get("from") or ""
    if source:
        if not is_valid_name(source):
            raise RequestError(400, "invalid model name")
        base = sim.library.get(source)
        if base is not None:
            return base, []
        # Ollama pulls a missing base model first.
        base, pulled = _pull_statuses(sim, source)
        sim.library.add(base)
        return base, pulled[:-1]
    if req.get("files"):
        for digest in req["files"].values():
            if _blob_key(digest) not in sim.library.blobs:
                raise RequestError(
                    500,
                    f"open /root/.ollama/models/blobs/"
                    f"{digest.replace(':', '-')}: no such file or directory",
                )
        return SimModel(name=display_shortest(name), size=_GENERIC_SIZE), [
            {"status": "parsing GGUF"}
        ]
    raise RequestError(400, "neither 'from' or 'files' was specified")


def copy(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    try:
        req = decode(body, COPY)
    except RequestError as e:
        return error_body(request, e.status, e.message)
    source, destination = req.get("source", ""), req.get("destination", "")
    if not is_valid_name(source):
        return error_body(request, 400, f"source {go_quote(source)} is invalid")
    if not is_valid_name(destination):
        return error_body(request, 400, f"destination {go_quote(destination)} is invalid")
    model = sim.library.get(source)
    if model is None:
        return error_body(request, 404, f"model {go_quote(source)} not found")
    sim.library.add(attrs.evolve(model, name=display_shortest(destination), modified_at=sim.wall()))
    return empty_body(request)


def delete(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    try:
        req = decode(body, DELETE)
    except RequestError as e:
        return error_body(request, e.status, e.message)
    name = req.get("model") or req.get("name") or ""
    if not name.strip():
        return error_body(request, 400, "model is required")
    if not is_valid_name(name):
        return error_body(request, 400, f"name {go_quote(name)} is invalid")
    # Ollama deletes the files but leaves a loaded runner alone.
    if sim.library.remove(name) is None:
        return error_body(request, 404, f"model '{name}' not found")
    return empty_body(request)


def _blob_key(digest: str) -> str:
    return "sha256:" + digest[7:]


def head_blob(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    if not _DIGEST.fullmatch(param):
        return error_body(request, 400, "invalid digest format")
    if _blob_key(param) not in sim.library.blobs:
        return error_body(request, 404, f"blob {go_quote(param)} not found")
    return empty_body(request)


def create_blob(sim: SimulatedOllama, request: Request, body: bytes, param: str) -> bytes:
    if not _DIGEST.fullmatch(param):
        return error_body(request, 400, "invalid digest format")
    if _blob_key(param) in sim.library.blobs:
        return empty_body(request)
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != param:
        return error_body(
            request, 400, f"digest mismatch, expected {go_quote(param)}, got {go_quote(actual)}"
        )
    sim.library.blobs.add(actual)
    return empty_body(request, 201)
