from __future__ import annotations

import pytest

from foreman.wire.model_names import canonical_model_name


@pytest.mark.parametrize(
    "name",
    [
        "llama3",
        "llama3:latest",
        "Llama3",
        "library/llama3",
        "registry.ollama.ai/library/llama3:latest",
    ],
)
def test_spellings_of_one_model(name: str) -> None:
    assert canonical_model_name(name) == "llama3:latest"


def test_tags_and_namespaces_stay_distinct() -> None:
    assert canonical_model_name("qwen3:8b") == "qwen3:8b"
    assert canonical_model_name("someone/model") == "someone/model:latest"
    assert canonical_model_name("host:5000/ns/model") == "host:5000/ns/model:latest"
