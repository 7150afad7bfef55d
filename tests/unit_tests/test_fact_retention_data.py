"""The hand-labelled fact set of ``benchmarks/data/retention``: varied, large enough, consistent."""

from __future__ import annotations

from benchmarks.fact_retention import load_outputs


def test_the_set_is_varied_and_large_enough() -> None:
    outputs = load_outputs()
    assert len(outputs) >= 10
    assert len({kind for kind, _, _ in outputs.values()}) >= 10
    assert sum(len(facts) for _, _, facts in outputs.values()) >= 60


def test_every_labelled_fact_is_in_its_output() -> None:
    for name, (_, text, facts) in load_outputs().items():
        absent = [fact.label for fact in facts if not fact.found_in(text)]
        assert not absent, f"{name}: {absent}"
