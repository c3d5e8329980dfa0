"""The simulated Ollama's model library: what is installed, and how it is described.

A :class:`SimModel` is one installed model. :class:`Library` holds the
installed set (what ``/api/tags`` lists) and renders the descriptions that
``/api/tags``, ``/api/ps`` and ``/api/show`` return, in Ollama's shapes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from foreman.wire.gojson import rfc3339
from foreman.wire.model_names import DEFAULT_NAMESPACE, DEFAULT_REGISTRY, canonical_model_name

# Default models are "installed" at fixed moments so /api/tags is stable
# across runs whatever clock the simulator is given (2025-06-01T00:00:00Z).
_LIBRARY_EPOCH = 1748736000.0


# --- names ------------------------------------------------------------------

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]*")


def is_valid_name(name: str) -> bool:
    """Roughly Ollama's ``model.Name.IsValid``: ``[host/][namespace/]model[:tag]``."""
    name = name.strip()
    if not name:
        return False
    rest, tag = name, ""
    if name.rfind(":") > name.rfind("/"):
        rest, _, tag = name.rpartition(":")
        if not _PART.fullmatch(tag) or len(tag) > 80:
            return False
    parts = rest.split("/")
    if len(parts) > 3 or not all(parts):
        return False
    if len(parts) == 3 and not _HOST.fullmatch(parts[0].split("://")[-1]):
        return False
    namespace_and_model = parts[-2:]
    return all(_PART.fullmatch(p) for p in namespace_and_model) and "." not in (
        namespace_and_model[0] if len(namespace_and_model) == 2 else ""
    )


def display_shortest(name: str) -> str:
    """Ollama's ``DisplayShortest``: drop the default registry/namespace, add the tag."""
    name = name.strip()
    if name.rfind(":") <= name.rfind("/"):
        name += ":latest"
    prefix = f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/"
    if name.lower().startswith(prefix):
        return name[len(prefix) :]
    if name.lower().startswith(f"{DEFAULT_NAMESPACE}/"):
        return name[len(DEFAULT_NAMESPACE) + 1 :]
    return name


def full_name(name: str) -> str:
    """The fully qualified name Ollama puts in capability errors."""
    short = display_shortest(name)
    slashes = short.count("/")
    if slashes == 0:
        return f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/{short}"
    if slashes == 1:
        return f"{DEFAULT_REGISTRY}/{short}"
    return short


def parameter_count(parameter_size: str) -> int:
    """``"3.2B"`` -> 3_200_000_000, as ``general.parameter_count`` shows it."""
    match = re.fullmatch(r"([\d.]+)\s*([KMBT]?)", parameter_size.strip().upper())
    if not match:
        return 0
    scale = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _valid_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not is_valid_name(value):
        raise ValueError(f"invalid model name {value!r}")


@attrs.frozen
class SimModel:
    """One model the simulated Ollama has installed.

    ``load_seconds`` is the simulated time a load takes before the first
    byte of the response; ``embedding_only`` models refuse chat and
    generate as Ollama does; ``thinking``, ``tools``, ``vision`` and
    ``insert`` are the capabilities ``/api/show`` reports and requests are
    checked against.
    """

    name: str = attrs.field(validator=_valid_name)
    size: int = attrs.field(validator=_positive)
    load_seconds: float = attrs.field(default=0.0, validator=_positive)
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    format: str = "gguf"
    embedding_only: bool = False
    thinking: bool = False
    tools: bool = True
    embedding_length: int = 384
    context_length: int = 131072
    vision: bool = False
    insert: bool = False
    modified_at: float = _LIBRARY_EPOCH

    @property
    def key(self) -> str:
        """The canonical name models are matched by."""
        return canonical_model_name(self.name)

    @property
    def digest(self) -> str:
        """A stable stand-in for the manifest digest (hex, as /api/tags shows it)."""
        return hashlib.sha256(f"manifest:{self.key}".encode()).hexdigest()

    @property
    def layer_digest(self) -> str:
        """The model weights' blob digest (``sha256:<hex>``)."""
        return "sha256:" + hashlib.sha256(f"weights:{self.key}".encode()).hexdigest()

    def capabilities(self) -> list[str]:
        """Capabilities in the order Ollama reports them."""
        if self.embedding_only:
            return ["embedding"]
        found = ["completion"]
        if self.tools:
            found.append("tools")
        if self.insert:
            found.append("insert")
        if self.vision:
            found.append("vision")
        if self.thinking:
            found.append("thinking")
        return found


def _library_model(index: int, **fields: Any) -> SimModel:
    return SimModel(modified_at=_LIBRARY_EPOCH - index * 86400.0, **fields)


#: A small, realistic installation: three chat models and two embedders.
DEFAULT_MODELS: tuple[SimModel, ...] = (
    _library_model(
        0,
        name="llama3.2:latest",
        size=2019393189,
        family="llama",
        parameter_size="3.2B",
        embedding_length=3072,
    ),
    _library_model(
        1,
        name="qwen3:8b",
        size=5225388164,
        family="qwen3",
        parameter_size="8.2B",
        thinking=True,
        embedding_length=4096,
        context_length=40960,
    ),
    _library_model(
        2,
        name="gemma3:12b",
        size=8149190253,
        family="gemma3",
        parameter_size="12.2B",
        tools=False,
        vision=True,
        embedding_length=3840,
    ),
    _library_model(
        3,
        name="nomic-embed-text:latest",
        size=274302450,
        family="nomic-bert",
        parameter_size="137M",
        quantization_level="F16",
        embedding_only=True,
        tools=False,
        embedding_length=768,
        context_length=2048,
    ),
    _library_model(
        4,
        name="all-minilm:latest",
        size=45960996,
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        embedding_only=True,
        tools=False,
        embedding_length=384,
        context_length=512,
    ),
)


# --- the installed set ------------------------------------------------------


class Library:
    """The installed models, keyed by canonical name."""

    def __init__(self, models: Iterable[SimModel]) -> None:
        self._models: dict[str, SimModel] = {}
        for model in models:
            self.add(model)
        self.blobs: set[str] = {m.layer_digest for m in self._models.values()}

    def get(self, name: str) -> SimModel | None:
        return self._models.get(canonical_model_name(name))

    def add(self, model: SimModel) -> None:
        self._models[model.key] = model

    def remove(self, name: str) -> SimModel | None:
        return self._models.pop(canonical_model_name(name), None)

    def all(self) -> list[SimModel]:
        return list(self._models.values())


def details(model: SimModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": model.format,
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def tags_entry(model: SimModel) -> dict[str, Any]:
    name = display_shortest(model.name)
    return {
        "name": name,
        "model": name,
        "modified_at": rfc3339(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": details(model),
    }


def tags_listing(models: Sequence[SimModel]) -> dict[str, Any]:
    # Ollama lists the most recently modified first.
    ordered = sorted(models, key=lambda m: -int(m.modified_at))
    return {"models": [tags_entry(m) for m in ordered]}


_CHAT_TEMPLATE = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}\n{{- end }}<|assistant|>\n"
_THINKING_TEMPLATE = (
    "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}\n{{- end }}<|assistant|>\n"
    "{{- if .Think }}<think>{{ .Thinking }}</think>{{ end }}"
)


def show_response(model: SimModel, *, verbose: bool = False) -> dict[str, Any]:
    """``/api/show`` for one model (no tensors; ``verbose`` adds token lists)."""
    template = (
        "{{ .Prompt }}"
        if model.embedding_only
        else (_THINKING_TEMPLATE if model.thinking else _CHAT_TEMPLATE)
    )
    short = display_shortest(model.name)
    blob = "/root/.ollama/models/blobs/" + model.layer_digest.replace(":", "-")
    parameters = [] if model.embedding_only else [f'{"stop":<30} "<|end|>"']
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {short}\n\n"
        f"FROM {blob}\n"
        f'TEMPLATE """{template}"""\n'
        + "".join(f"PARAMETER {p.split()[0]} {p.split(None, 1)[1]}\n" for p in parameters)
        + 'LICENSE """Simulated model: no license applies."""\n'
    )
    arch = model.family
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": short.split(":")[0].split("/")[-1],
        "general.file_type": 15 if model.quantization_level == "Q4_K_M" else 1,
        "general.parameter_count": parameter_count(model.parameter_size),
        "general.quantization_version": 2,
        f"{arch}.context_length": model.context_length,
        f"{arch}.embedding_length": model.embedding_length,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"] if verbose else [],
    }
    response: dict[str, Any] = {
        "license": "Simulated model: no license applies.",
        "modelfile": modelfile,
    }
    if parameters:
        response["parameters"] = "\n".join(parameters)
    response.update(
        {
            "template": template,
            "details": details(model),
            "model_info": model_info,
            "capabilities": model.capabilities(),
            "modified_at": rfc3339(model.modified_at),
        }
    )
    return response
