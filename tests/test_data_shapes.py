"""Every analysis CLI against every shape of data a user brings (issue #25).

A *shape* is a user's own question file (JSON lines or CSV, images from the embedded easy-VQA
test set) varied along what users' files vary in: how many samples carry boxes, how many
samples there are, whether the model answers them right, which kinds there are, the kind of
answer (letters, numbers, yes/no, free text, several tokens), an unreadable image, a question
near the model's context limit, and one file or several (``--data a,b``). Hypothesis draws the
shapes; each CLI runs in this process on the embedded tiny model (loaded once) with tiny limits.

For each (CLI, shape) the run must either

- complete (exit 0): ``summary.json`` written, with a ``skipped`` list of {part, reason} for
  the parts that did not apply (each also named in the printed table), every aggregate row of
  no samples NaN with n = 0; or
- refuse (exit 2) in one sentence on stderr, before the model has run a single forward.

Never a traceback. The budget is fixed (``derandomize=True``) so CI sees the same cells every
run; ``FUSIONLENS_SHAPES_EXAMPLES`` raises it for a broad search.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analyses.attention_evolution.__main__ import main as evolution_main
from analyses.attenuation.__main__ import main as attenuation_main
from analyses.contrastive_attention.__main__ import main as contrastive_main
from analyses.evaluate.__main__ import main as evaluate_main
from analyses.heads.__main__ import main as heads_main
from analyses.layer_masking.__main__ import main as layer_masking_main
from analyses.logit_lens.__main__ import main as logit_lens_main
from analyses.patching.__main__ import main as patching_main
from analyses.sinks.__main__ import main as sinks_main
from analyses.token_importance.__main__ import main as token_importance_main
from analyses.train_vif.__main__ import main as train_vif_main
from probes.cli import EXIT_BAD_INPUT, run_cli
from probes.errors import UserError

EXAMPLES = int(os.environ.get("FUSIONLENS_SHAPES_EXAMPLES", "6"))
FAST = ["--bootstrap", "20"]

# analysis -> (its CLI's main, the options that keep a run tiny)
ANALYSES = {
    "layer_masking": (layer_masking_main, [*FAST, "--flows", "image->last;object->last"]),
    "token_importance": (token_importance_main,
                         [*FAST, "--ratios", "0.5", "--fixed-ratios", "0.5",
                          "--max-new-tokens", "2", "--timed-samples", "1"]),
    "attention_evolution": (evolution_main, [*FAST, "--examples", "2"]),
    "contrastive_attention": (contrastive_main, [*FAST, "--max-new-tokens", "2",
                                                 "--examples", "2"]),
    "attenuation": (attenuation_main, FAST),
    "logit_lens": (logit_lens_main, FAST),
    "heads": (heads_main, [*FAST, "--controls", "2"]),
    "patching": (patching_main, [*FAST, "--sites", "residual,head"]),
    "sinks": (sinks_main, FAST),
    "train_vif": (train_vif_main, ["--steps", "1", "--batch-size", "2"]),
    "evaluate": (evaluate_main, [*FAST, "--methods", "clean,aif", "--max-new-tokens", "2"]),
}

# refusals that only the model's own answers can decide (after its forwards, then)
LATE_REFUSALS = ("leaves the model's answer unchanged on every one",)

BOXES = ("none", "some", "all")
ANSWERS = ("natural", "wrong", "right")
KINDS = ("several", "one", "absent")
TYPES = ("free", "letters", "numbers", "yesno", "words")


@dataclass(frozen=True)
class Shape:
    """What a user's data file looks like."""

    n: int = 2
    boxes: str = "all"  # which samples carry a box: none, some (every other), all
    answers: str = "natural"  # natural; wrong: no answer the model gives; right: the model's
    kinds: str = "several"  # several (each below any per-kind minimum), one, absent
    answer_type: str = "free"
    broken_image: bool = False  # the last sample's image file is not an image
    long_question: bool = False  # the first question fills the context up to a few tokens
    files: int = 1  # --data a,b: the samples split over this many files
    fmt: str = "jsonl"


shapes = st.builds(
    Shape, n=st.sampled_from((1, 2, 3)), boxes=st.sampled_from(BOXES),
    answers=st.sampled_from(ANSWERS), kinds=st.sampled_from(KINDS),
    answer_type=st.sampled_from(TYPES), broken_image=st.booleans(),
    long_question=st.booleans(), files=st.sampled_from((1, 2)),
    fmt=st.sampled_from(("jsonl", "csv")))


# ---------------------------------------------------------------- the embedded model, once

_LOADED = {}


@pytest.fixture(scope="module")
def cached_model():
    """The tiny model loaded once and handed to every CLI (their loader is patched), with a
    count of the forwards it has run (a refusal must come before the first)."""
    from analyses import common
    from probes.models.loading import load_model

    loaded = load_model("tiny-llava", device="cpu")
    forwards = [0]
    embed = loaded.model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    _LOADED.update(loaded=loaded, forwards=forwards)
    original = common.load_model
    common.load_model = lambda *a, **k: loaded
    yield _LOADED
    common.load_model = original
    handle.remove()


# ---------------------------------------------------------------- writing a shape to disk

def _easy_vqa_samples(count: int):
    from analyses.data import load_dataset

    return list(load_dataset("easy-vqa", "test", limit=count))


def _rows(shape: Shape, folder: Path, loaded) -> list[dict]:
    """The rows of the shape's file(s); images are written into ``folder``."""
    samples = _easy_vqa_samples(max(shape.n * 3, 6))[:: 3][: shape.n]
    rows = []
    for i, sample in enumerate(samples):
        name = f"image{i}.png"
        sample.image.save(folder / name)
        row = {"image": name, "question": sample.question, "answer": sample.answer,
               "kind": sample.kind, "id": f"q{i}"}
        colour, form = _colour_and_shape(sample)
        if shape.answer_type == "letters":
            options = ["circle", "rectangle", "triangle"]
            row.update(question=f"which shape is {colour} ?", choices=options,
                       answer="ABC"[options.index(form)])
        elif shape.answer_type == "numbers":
            row.update(question="how many shapes are there ?", answer="1")
        elif shape.answer_type == "yesno":
            row.update(question=f"is there a {form} ?", answer="yes" if i % 2 == 0 else "no")
        elif shape.answer_type == "words":
            row.update(question="what is in the image ?", answer=f"a {colour} {form}")
        if shape.boxes == "all" or (shape.boxes == "some" and i % 2 == 0):
            box = sample.target_boxes[0]
            row["boxes"] = [[box.x0, box.y0, box.x1, box.y1]]
        if shape.kinds == "one":
            row["kind"] = "shape"
        elif shape.kinds == "absent":
            del row["kind"]
        rows.append(row)
    if shape.long_question:
        rows[0]["question"] = _long_question(loaded, rows[0]["question"], samples[0].image)
    if shape.answers == "wrong":
        for row in rows:
            row["answer"] = "C" if "choices" in row else "zebra"
            if "choices" in row:
                row["choices"] = ["circle", "rectangle", "zebra"]
    elif shape.answers == "right":
        _answer_as_the_model(rows, folder, loaded)
    if shape.broken_image:
        (folder / rows[-1]["image"]).write_bytes(b"not an image")
    return rows


def _colour_and_shape(sample) -> tuple[str, str]:
    from analyses.data.palette import COLORS, SHAPES

    words = sample.question.replace("?", " ").split() + [sample.answer]
    colour = next((w for w in words if w in COLORS), "red")
    form = next((w for w in words if w in SHAPES), "circle")
    return colour, form


def _long_question(loaded, question: str, image) -> str:
    """``question`` padded in front to within a few tokens of the context limit (as the
    model's prompt counts them; a template that adds more, e.g. listed choices, may pass it:
    that sample then fails alone and is recorded)."""
    filler = "the shape is here "
    count = 0
    while True:
        longer = filler * (count + 8) + question
        try:
            length = loaded.adapter.build_inputs([image], [longer]).input_ids.shape[1]
        except UserError:  # past the context
            length = loaded.adapter.max_context + 1
        if length > loaded.adapter.max_context - 8:
            return filler * count + question
        count += 8


def _answer_as_the_model(rows: list[dict], folder: Path, loaded) -> None:
    """Each row's answer set to the model's own greedy reply (so every answer is right)."""
    from analyses import scoring
    from analyses.common import prompt_data
    from analyses.data.own import load_own
    from analyses.grading import replies

    path = folder / "probe.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = prompt_data(load_own(path), loaded.adapter.family)
    texts = []
    for sample in dataset:
        try:
            texts += replies(loaded, [sample], [scoring.reply_tokens(sample)])
        except UserError:  # a question past the context: no reply to copy
            texts.append("none")
    path.unlink()
    for row, text in zip(rows, texts):
        text = text.strip() or "none"
        if "choices" in row:  # the reply as an option
            letter = text[:1].upper()
            if letter in "ABC":
                row["answer"] = letter
            else:
                row["choices"] = [*row["choices"][:2], text]
                row["answer"] = "C"
        else:
            row["answer"] = text


def write_shape(shape: Shape, folder: Path, loaded) -> str:
    """The shape's file(s) in ``folder``; the ``--data`` value naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(shape, folder, loaded)
    parts = [rows[i::shape.files] for i in range(shape.files)]
    names = []
    for k, part in enumerate(p for p in parts if p):
        path = folder / f"data{k}.{shape.fmt}"
        if shape.fmt == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in part))
        else:
            columns = ["image", "question", "answer", "choices", "boxes", "kind", "id"]
            columns = [c for c in columns if any(c in row for row in part)]
            with path.open("w", newline="") as stream:
                writer = csv.DictWriter(stream, columns)
                writer.writeheader()
                for row in part:
                    writer.writerow({c: json.dumps(row[c]) if isinstance(row.get(c), list)
                                     else row.get(c, "") for c in columns})
        names.append(str(path))
    return ",".join(names)


# ---------------------------------------------------------------- running one cell

@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    error: BaseException | None  # an exception that escaped the CLI: a traceback
    forwards: int  # model forwards the run made
    out: Path


def run_cell(analysis: str, data: str, out: Path, cache) -> Outcome:
    main, extra = ANALYSES[analysis]
    argv = ["--model", "tiny-llava", "--device", "cpu", "--data", data, "--out", str(out),
            *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    before = cache["forwards"][0]
    error = code = None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = run_cli(main, argv)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a traceback is the finding
            error = err
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), error,
                   cache["forwards"][0] - before, out)


def _nan_rows_are_empty(value, where: str) -> list[str]:
    """Problems with the rule "a row of no samples is NaN with n = 0" anywhere in a summary."""
    problems = []
    if isinstance(value, dict):
        if value.get("n") == 0:
            for key in ("mean", "accuracy"):
                if key in value and value[key] is not None and not math.isnan(value[key]):
                    problems.append(f"{where}: n = 0 but {key} = {value[key]}")
        for key, item in value.items():
            problems += _nan_rows_are_empty(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += _nan_rows_are_empty(item, f"{where}[{i}]")
    return problems


def problems_of(outcome: Outcome) -> list[str]:
    """What is wrong with a cell's outcome (empty when it is as the issue says)."""
    if outcome.error is not None:
        return [f"traceback: {type(outcome.error).__name__}: {outcome.error}"]
    if outcome.code == EXIT_BAD_INPUT:
        message = outcome.stderr.strip().splitlines()
        found = []
        errors = [line for line in message if line.startswith("error: ")]
        if len(errors) != 1:
            found.append(f"refusal is not one 'error:' line: {outcome.stderr[-300:]!r}")
        # a refusal that only the model's answers can decide comes after model work
        if outcome.forwards and not any(late in outcome.stderr for late in LATE_REFUSALS):
            found.append(f"refused after model work ({outcome.forwards} forwards): "
                         f"{errors[:1]}")
        return found
    if outcome.code != 0:
        return [f"exit code {outcome.code}"]
    summary_file = outcome.out / "summary.json"
    if not summary_file.is_file():
        return ["exit 0 without summary.json"]
    summary = json.loads(summary_file.read_text())
    found = _nan_rows_are_empty(summary, "summary")
    skipped = summary.get("skipped")
    if not isinstance(skipped, list):
        found.append("summary.json has no 'skipped' list")
    else:
        for row in skipped:
            if not (isinstance(row, dict) and row.get("part") and row.get("reason")):
                found.append(f"skipped row without part and reason: {row}")
            elif row["part"] not in outcome.stdout:
                found.append(f"skipped part {row['part']!r} not named in the printed table")
    return found


# ---------------------------------------------------------------- the matrix

@pytest.mark.parametrize("analysis", list(ANALYSES))
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(shape=shapes)
# the cells that failed before issue #25's fix, always run: no box at all, nothing to sweep
@example(shape=Shape(boxes="none"))
@example(shape=Shape(n=1, answers="wrong", kinds="absent", answer_type="letters"))
def test_every_shape_completes_or_refuses_before_model_work(analysis, shape, cached_model,
                                                            tmp_path):
    folder = tmp_path / f"cell{abs(hash(shape))}"
    shutil.rmtree(folder, ignore_errors=True)
    data = write_shape(shape, folder / "data", cached_model["loaded"])
    outcome = run_cell(analysis, data, folder / "out", cached_model)
    assert not problems_of(outcome), (shape, problems_of(outcome), outcome.stdout[-2000:])


def survey_cells() -> list[Shape]:
    """One cell per value of each dimension, from a base shape (the broad search's list)."""
    base = Shape(n=2)
    cells = [base]
    for field_name, values in (("n", (1, 2, 3)), ("boxes", BOXES), ("answers", ANSWERS),
                               ("kinds", KINDS), ("answer_type", TYPES),
                               ("broken_image", (True,)), ("long_question", (True,)),
                               ("files", (2,)), ("fmt", ("csv",))):
        for value in values:
            cell = replace(base, **{field_name: value})
            if cell not in cells:
                cells.append(cell)
    return cells
