"""Placement of a sync call in a fleet (foreman/front/placement.py, ADR-0027):
the soonest start, and a model's home."""

from __future__ import annotations

from typing import Any

from foreman.front.placement import HOME_SECONDS, Homes, candidates


def box(box_id: str, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "id": box_id,
        "url": f"http://{box_id}",
        "this": False,
        "alive": True,
        "answering": True,
        "models": ["llama3.2", "qwen3:8b", "gemma3:12b", "mistral"],
        "resident": None,
        "running": None,
        "interactive_waiting": 0,
        "average_job_seconds": 2.0,
        "load_seconds": {"llama3.2:latest": 1.0, "qwen3:8b": 3.0},
    }
    return {**defaults, **fields}


def ids(found: Any) -> list[str]:
    return [candidate.id for candidate in found]


def test_the_soonest_start_counting_the_load_then_a_holder_then_this_box() -> None:
    here = box("A", this=True, resident="llama3.2", running={"id": "j"}, interactive_waiting=2)
    idle = box("B")
    # qwen3 on A: 2.5 jobs of 2 s ahead + 3 s load; on idle B: a 3 s load only.
    assert ids(candidates("qwen3:8b", [here, idle])) == ["B", "A"]
    # llama3.2: A holds it but 5 s of work is ahead; B loads it in 1 s.
    assert ids(candidates("llama3.2", [here, idle])) == ["B", "A"]
    # A tie goes to the box that holds the model, then to this box.
    quiet = box("A", this=True, resident="llama3.2")
    assert ids(candidates("llama3.2", [box("B", resident="llama3.2"), quiet])) == ["A", "B"]
    assert ids(candidates("qwen3:8b", [box("B"), box("A", this=True)])) == ["A", "B"]


def test_boxes_that_lack_the_model_or_cannot_be_reached_are_not_candidates() -> None:
    found = candidates(
        "qwen3:8b",
        [
            box("gone", alive=False),
            box("silent", answering=False),
            box("nowhere", url=None),
            box("other", models=["llama3.2"]),
            box("A", this=True, answering=False),  # this box is always usable
        ],
    )
    assert ids(found) == ["A"]


def test_a_model_keeps_its_home_and_models_spread_over_the_boxes() -> None:
    homes = Homes()
    boxes = [box("A", this=True), box("B")]
    first = ids(homes.order("llama3.2", candidates("llama3.2", boxes), 0.0))
    second = ids(homes.order("qwen3:8b", candidates("qwen3:8b", boxes), 1.0))
    # Two models, two boxes: one each, whatever their starts say.
    assert first[0] != second[0]
    # Called again, each model goes home, even when the other box looks sooner.
    busy_home = [
        box("A", this=True, running={"id": "j"}, interactive_waiting=3),
        box("B"),
    ]
    for at in (2.0, 30.0, 50.0):
        assert ids(homes.order("llama3.2", candidates("llama3.2", busy_home), at))[0] == first[0]
    # A home left unused for long is chosen afresh.
    later = 50.0 + HOME_SECONDS + 1
    assert ids(homes.order("qwen3:8b", candidates("qwen3:8b", busy_home), later))[0] == "B"


def test_a_home_that_cannot_take_the_model_is_not_kept() -> None:
    homes = Homes()
    assert ids(homes.order("qwen3:8b", candidates("qwen3:8b", [box("B")]), 0.0)) == ["B"]
    # B is gone: the call goes where it can, and that becomes its home.
    here = [box("A", this=True), box("B", alive=False)]
    assert ids(homes.order("qwen3:8b", candidates("qwen3:8b", here), 1.0)) == ["A"]
    assert homes.order("qwen3:8b", [], 2.0) == []
