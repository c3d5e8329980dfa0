"""The metrics module on its own: route labels, Ollama's timings, exposition."""

from __future__ import annotations

import json

import pytest

from foreman.ops.metrics import ForemanMetrics, route_of


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/chat", "/api/chat"),
        ("/jobs", "/jobs"),
        ("/jobs/01JABC", "/jobs/{id}"),
        ("/jobs/01JABC/cancel", "/jobs/{id}/cancel"),
        ("/jobs/01JABC/artifacts/completion", "/jobs/{id}/artifacts/{name}"),
        ("/api/blobs/sha256:abc", "/api/blobs/{digest}"),
        ("/ui/status.json", "/ui"),
        ("/wp-login.php", "other"),
    ],
)
def test_routes_fold_ids_into_their_pattern(path: str, route: str) -> None:
    assert route_of(path) == route


def sample(metrics: ForemanMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def final_line(**fields: object) -> bytes:
    document = {"model": "llama3.2", "done": True, **fields}
    return json.dumps(document).encode()


def test_ollamas_final_timings_become_first_token_time_and_token_rate() -> None:
    metrics = ForemanMetrics()
    metrics.reply_delivered(
        b"/api/chat",
        final_line(
            load_duration=1_500_000_000,
            prompt_eval_duration=500_000_000,
            eval_count=50,
            eval_duration=2_000_000_000,
        ),
    )
    labels = {"model": "llama3.2"}
    assert sample(metrics, "foreman_generations_total", **labels) == 1
    assert sample(metrics, "foreman_generation_time_to_first_token_seconds_sum", **labels) == 2.0
    assert sample(metrics, "foreman_generation_tokens_per_second_sum", **labels) == 25.0


@pytest.mark.parametrize(
    ("path", "final"),
    [
        (b"/api/embed", final_line(eval_count=3, eval_duration=1)),  # not a generation
        (b"/api/chat", b'{"model":"llama3.2","done":true,"done_reason":"load"}'),  # a load call
        (b"/api/chat", b'{"eval_count": broken'),
        (b"/api/generate", b'["eval_count"]'),
    ],
)
def test_replies_without_timings_are_not_counted(path: bytes, final: bytes) -> None:
    metrics = ForemanMetrics()
    metrics.reply_delivered(path, final)
    assert b"foreman_generations_total{" not in metrics.render()


def test_requests_are_counted_by_route_and_embeddings_timed() -> None:
    metrics = ForemanMetrics()
    metrics.request_finished("/api/embed", "POST", 200, 0.004)
    metrics.request_finished("/api/embed", "POST", 404, 0.001)
    metrics.request_finished("/jobs/01JX", "GET", 200, 0.002)
    assert (
        sample(
            metrics, "foreman_http_requests_total", route="/api/embed", method="POST", status="200"
        )
        == 1
    )
    assert (
        sample(
            metrics, "foreman_http_requests_total", route="/jobs/{id}", method="GET", status="200"
        )
        == 1
    )
    # Only successful embeddings are timed as embeddings.
    assert sample(metrics, "foreman_embedding_duration_seconds_count") == 1
    assert metrics.render().startswith(b"# HELP")


def test_the_dialects_routes_have_labels_of_their_own() -> None:
    from foreman.ops.metrics import route_of

    assert route_of("/v1/chat/completions") == "/v1/chat/completions"
    assert route_of("/v1/messages") == "/v1/messages"
    assert route_of("/v1/models/llama3.2") == "/v1/models/{model}"
    assert route_of("/v1/assistants") == "other"
    # OpenAI's Files and Batch APIs are foreman's own: ids fold into patterns.
    assert route_of("/v1/files") == "/v1/files"
    assert route_of("/v1/files/file-01J/content") == "/v1/files/{id}/content"
    assert route_of("/v1/batches/batch_01J/cancel") == "/v1/batches/{id}/cancel"
    assert route_of("/v1/batches/batch_01J") == "/v1/batches/{id}"
    # The keys API: a key's name folds into a pattern.
    assert route_of("/api/foreman/keys") == "/api/foreman/keys"
    assert route_of("/api/foreman/keys/alice") == "/api/foreman/keys/{name}"
