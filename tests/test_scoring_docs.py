"""docs/scoring.md says what the code does: its rule table names exactly the registered rules,
each benchmark's rule is the one its loader sets (samples built by the loaders), the summary
and token budget of each rule are the code's, and every deviation class it lists has the test
it names (and every such test is listed)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import scoring_samples as real

from analyses.data import available_datasets, load_dataset
from analyses.scoring import RULES, SUMMARY_OF_DATASET, SUMMARY_OF_SCORER, reply_tokens

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "scoring.md"
REFERENCE_TESTS = ROOT / "tests" / "test_scoring_reference.py"
OWN = {"own data with choices": "choice", "own data without choices": "exact"}


def table(marker: str) -> list[dict[str, str]]:
    """The Markdown table after ``<!-- marker -->`` in docs/scoring.md, one dict per row."""
    text = DOCS.read_text(encoding="utf-8")
    lines = text[text.index(f"<!-- {marker} -->"):].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, rows = rows[0], rows[2:]
    return [dict(zip(header, row)) for row in rows]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_rules() -> dict[str, dict[str, str]]:
    return {ticked(row["rule"])[0]: row for row in table("rule table")}


def test_the_documented_rules_are_the_registered_ones():
    assert set(documented_rules()) == set(RULES)


def test_each_rules_summary_and_budget_are_the_codes():
    dataset_summaries = {}
    for rule, row in documented_rules().items():
        summary = ticked(row["summary"])
        assert summary[0] == SUMMARY_OF_SCORER[rule], rule
        dataset_summaries.update(dict(zip(summary[1::2], summary[2::2])))
        assert int(row["new tokens"]) == reply_tokens(SimpleNamespace(scorer=rule)), rule
    assert dataset_summaries == SUMMARY_OF_DATASET


def documented_benchmarks() -> dict[str, str]:
    """Every benchmark (and kind of own data) the rule table names, with its rule."""
    named = {}
    for rule, row in documented_rules().items():
        cell = row["benchmarks"]
        for name in ticked(cell) + [own for own in OWN if own in cell]:
            assert name not in named, f"{name} is documented under two rules"
            named[name] = rule
    return named


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, object]:
    """One sample of every dataset and kind of own data, built by its loader."""
    root = tmp_path_factory.mktemp("benchmarks")
    rows = {"mmstar": real.mmstar_row("A", ("x", "y")), "vstar": real.vstar_row("A", ("x", "y")),
            "realworldqa": real.realworldqa_row("B", ("x", "y")), "textvqa": real.textvqa_row(["a"] * 10),
            "countbench": real.countbench_row(3), "pope": real.pope_row("yes"),
            **{name: real.refcoco_row([1, 2, 3, 4]) for name in ("refcoco", "refcoco+", "refcocog")}}
    samples = {name: real.load_rows(root, name, [row])[0] for name, row in rows.items()}
    samples["gqa"] = real.gqa_samples(root, ["left"])[0]
    for name in ("easy-vqa", "fine-grained"):
        samples[name] = load_dataset(name, limit=1)[0]
    with_choices, without = real.own_samples(root, [
        {"question": "Which?", "choices": ["x", "y"], "answer": "y"},
        {"question": "What?", "answer": "cat"}])
    samples.update({"own data with choices": with_choices, "own data without choices": without})
    return samples


def test_every_dataset_is_documented_with_the_rule_its_loader_sets(loaded):
    documented = documented_benchmarks()
    assert set(documented) == set(available_datasets()) | set(OWN)
    assert {name: sample.scorer for name, sample in loaded.items()} == documented


def reference_test_names() -> set[str]:
    tree = ast.parse(REFERENCE_TESTS.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_deviation_class_has_its_test_and_every_class_test_is_listed():
    rows = table("deviation table")
    named = {ticked(row["test"])[0] for row in rows}
    tests = reference_test_names()
    assert named <= tests
    assert {name for name in tests if name.startswith("test_class_")} == named


def test_the_classes_counted_are_the_documented_ones():
    classes = {ticked(row["class"])[0] for row in table("deviation table")}
    counted = set()
    for row in table("agreement table"):
        if row["by class"] != "none":
            counted |= {part.rsplit(" ", 1)[0] for part in row["by class"].split(", ")}
    assert counted <= classes
    assert {ticked(row["check"])[0] for row in table("agreement table")} <= set(
        available_datasets())
