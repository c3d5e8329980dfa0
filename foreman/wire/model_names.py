"""How Ollama decides that two model names mean the same model.

``llama3``, ``llama3:latest``, ``library/llama3`` and
``registry.ollama.ai/library/llama3:latest`` all name one model, and Ollama
matches names without regard to case. Both foreman's inventory and the
simulated Ollama compare names through :func:`canonical_model_name`.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def canonical_model_name(name: str) -> str:
    """Return the short, lower-cased ``name:tag`` form used for comparisons."""
    name = name.strip().lower()
    if name.startswith(DEFAULT_REGISTRY + "/"):
        name = name[len(DEFAULT_REGISTRY) + 1 :]
    if name.startswith(DEFAULT_NAMESPACE + "/"):
        name = name[len(DEFAULT_NAMESPACE) + 1 :]
    last_segment = name.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        name = f"{name}:{DEFAULT_TAG}"
    return name
