"""Every numeric option of every CLI against generated values (issue #26): in range, at and
beyond its bounds, and malformed (words, NaN, infinities, huge numbers, fractions for counts).

``SPEC`` below is the reference: each option's valid range as its help and the design say,
written here independently of the validators. Each cell runs a CLI's ``main`` in this process
with the model loader (and training) replaced by a stub that raises :class:`Reached`, so a
cell costs no model work. A cell must

- refuse (exit 2, exactly one line on stderr naming a refused option) without reaching the
  loader when any value is out of range or malformed;
- reach the loader (or refuse in one line for another reason, e.g. two options that exclude
  each other) when every value is in range.

Never a traceback, never another exit code. The budget is fixed (``derandomize=True``), so CI
sees the same cells every run; ``FUSIONLENS_OPTIONS_EXAMPLES`` raises it for a broad search.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUSIONLENS_OPTIONS_EXAMPLES", "60"))
INF = math.inf


@dataclass(frozen=True)
class Range:
    """A numeric option's valid values: whole numbers or finite reals from ``low`` to
    ``high`` (``*_open``: the bound excluded)."""

    whole: bool
    low: float = -INF
    high: float = INF
    low_open: bool = False
    high_open: bool = False

    def admits(self, text: str) -> bool:
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


TRAINERS = ("analyses.train_tiny", "analyses.train_smollm2")  # modules with main, no __main__
COUNT = Range(True, 1)  # at least one
SOME = Range(True, 0)  # none or more
SEED = Range(True, 0, 2**32 - 1)
THREADS = Range(True, 1, 1024)
BOOTSTRAP = Range(True, 1, 10**6)
SHARE = Range(False, 0, 1)  # [0, 1]
REAL = Range(False)


@dataclass(frozen=True)
class LayerList:
    """Layer numbers separated by commas, at least one, none negative."""

    def admits(self, text: str) -> bool:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            return bool(parts) and all(int(part) >= 0 for part in parts)
        except ValueError:
            return False


@dataclass(frozen=True)
class HeadList:
    """LAYER.HEAD pairs separated by commas, at least one, none negative."""

    def admits(self, text: str) -> bool:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            pairs = [tuple(int(v) for v in part.split(".")) for part in parts]
        except ValueError:
            return False
        return bool(pairs) and all(len(p) == 2 and min(p) >= 0 for p in pairs)


@dataclass(frozen=True)
class Multiple:
    """A positive whole multiple of ``of``."""

    of: int

    def admits(self, text: str) -> bool:
        try:
            value = int(text)
        except ValueError:
            return False
        return value > 0 and value % self.of == 0


@dataclass(frozen=True)
class Shard:
    """i/n with 0 <= i < n."""

    def admits(self, text: str) -> bool:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            return False
        return 0 <= index < count


RUNNER = {"--limit": COUNT, "--batch-size": COUNT, "--seed": SEED, "--min-pixels": COUNT,
          "--max-pixels": COUNT, "--workers": COUNT, "--gpus-per-worker": Range(False, 0),
          "--threads": THREADS, "--shard": Shard()}

# CLI module -> (the options every cell gives, the numeric options' ranges)
SPEC = {
    "analyses.evaluate": ([], {**RUNNER, "--max-new-tokens": COUNT, "--bootstrap": BOOTSTRAP}),
    "analyses.attenuation": ([], {**RUNNER, "--small-cells": Range(False, 0, low_open=True),
                                  "--bootstrap": BOOTSTRAP}),
    "analyses.contrastive_attention": ([], {
        **RUNNER, "--late-layer": SOME, "--early-layer": SOME, "--bias": Range(False, high=0),
        "--ratio": Range(False, 0, 1, high_open=True), "--threshold": REAL,
        "--max-new-tokens": COUNT, "--examples": SOME, "--bootstrap": BOOTSTRAP,
        "--refine-layers": LayerList()}),
    "analyses.token_importance": ([], {
        **RUNNER, "--ratio": SHARE, "--max-new-tokens": COUNT,
        "--top-fraction": Range(False, 0, 1, low_open=True), "--timed-samples": SOME,
        "--bootstrap": BOOTSTRAP}),
    "analyses.layer_masking": ([], {**RUNNER, "--window": COUNT, "--bootstrap": BOOTSTRAP,
                                    "--min-effect": Range(False, 0, 100),
                                    "--min-kind-samples": COUNT}),
    "analyses.attention_evolution": ([], {
        **RUNNER, "--top-share": Range(False, 0, 1, low_open=True, high_open=True),
        "--sink-threshold": Range(False, 0, 1, low_open=True), "--examples": SOME,
        "--bootstrap": BOOTSTRAP, "--figure-layers": LayerList()}),
    "analyses.logit_lens": ([], {**RUNNER, "--bootstrap": BOOTSTRAP,
                                 "--figure-layers": LayerList()}),
    "analyses.heads": ([], {**RUNNER, "--bootstrap": BOOTSTRAP, "--heads": HeadList(),
                            "--controls": COUNT, "--top": COUNT, "--alpha": SHARE,
                            "--min-effect": Range(False, 0)}),
    "analyses.patching": ([], {**RUNNER, "--bootstrap": BOOTSTRAP,
                               "--noise-scale": Range(False, 0, low_open=True)}),
    "analyses.sinks": ([], {**RUNNER, "--bootstrap": BOOTSTRAP,
                            "--tau": Range(False, 0, low_open=True)}),
    "analyses.train_vif": ([], {
        **RUNNER, "--steps": SOME, "--lr": Range(False, 0, low_open=True),
        "--kl-weight": Range(False, 0), "--sparsity-weight": Range(False, 0),
        "--fine-fraction": SHARE, "--alpha": SHARE, "--learn-layers": LayerList(),
        "--apply-layers": LayerList()}),
    "analyses.train_tiny": ([], {
        "--seed": SEED, "--steps": COUNT, "--threads": THREADS, "--shape-only-fraction": SHARE,
        "--fine-grained-share": SHARE, "--shape-oversample": Range(False, 0, low_open=True),
        "--lr": Range(False, 0, low_open=True), "--warmup": SOME,
        "--text-layers": COUNT, "--text-width": Multiple(8)}),
    "analyses.train_smollm2": (["--lora-rank", "1"], {
        "--seed": SEED, "--steps": COUNT, "--batch-size": COUNT, "--threads": THREADS,
        "--lr": Range(False, 0, low_open=True), "--warmup": SOME, "--shape-only-fraction": SHARE,
        "--shape-oversample": Range(False, 0, low_open=True), "--eval-every": COUNT,
        "--checkpoint-every": COUNT, "--lora-rank": SOME,
        "--lora-alpha": Range(False, 0, low_open=True)}),
    "probes.models": (["answer", "--question", "what is it?"],
                      {"--max-new-tokens": COUNT, "--threads": THREADS}),
    "probes.lens": (["crosscheck", "--question", "what is it?"],
                    {"--tolerance": Range(False, 0), "--threads": THREADS}),
}

# values drawn for an option: in range, at and beyond its bounds, malformed
MALFORMED = ["", "abc", "nan", "NaN", "inf", "-inf", "1e999", "0x10", "1.5", "2.", "1e3",
             "-0", " 3", "3 ", "1,2", "--", "１", "9" * 40, "-" + "9" * 40, "0/1", "1/2", "3/2",
             "-1/2", "0/0", "a/b", "1/2/3", "0,-1", "2,,3", ",", "4294967296", "4294967295",
             "1024", "1025", "1000000", "1000001", "1e-300", "-1e-300"]


def values_for(spec) -> st.SearchStrategy[str]:
    numbers = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70)).map(str)
    reals = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    near = st.sampled_from([-1.0, -1e-9, 0.0, 1e-9, 0.5, 1.0, 1.0 + 1e-9, 2.0, 100.0,
                            100.5]).map(repr)
    return st.one_of(numbers, reals, near, st.sampled_from(MALFORMED))


@st.composite
def cells(draw):
    module = draw(st.sampled_from(sorted(SPEC)))
    base, options = SPEC[module]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=3,
                           unique=True))
    given_values = {name: draw(values_for(options[name])) for name in chosen}
    return module, base, given_values


class Reached(Exception):
    """The cell got past every option check to the model (or training)."""


def _reached(*args, **kwargs):
    raise Reached


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """The loaders and the trainer replaced by :func:`_reached`; an image for the probes."""
    from PIL import Image

    import analyses.common
    import analyses.train_smollm2
    import analyses.train_tiny
    import probes.lens.extra
    import probes.models.loading

    folder = tmp_path_factory.mktemp("options")
    image = folder / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    patched = [(analyses.common, "load_model"), (probes.models.loading, "load_model"),
               (analyses.train_tiny, "train"), (analyses.train_smollm2, "train")]
    saved = [(module, name, getattr(module, name)) for module, name in patched]
    saved.append((probes.lens.extra, "require_transformer_lens",
                  probes.lens.extra.require_transformer_lens))
    for module, name in patched:
        setattr(module, name, _reached)
    probes.lens.extra.require_transformer_lens = lambda: None
    yield folder, image
    for module, name, original in saved:
        setattr(module, name, original)


@dataclass
class Outcome:
    code: int | None
    stderr: str
    reached: bool
    error: BaseException | None


def run_cell(module: str, argv: list[str]) -> Outcome:
    import importlib

    from probes.cli import run_cli

    main = importlib.import_module(module if module in TRAINERS else f"{module}.__main__").main
    stderr = io.StringIO()
    code = error = None
    reached = False
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run_cli(main, argv)
        except Reached:
            reached = True
        except SystemExit as exit_:
            code = exit_.code
        except Exception as err:  # noqa: BLE001 - a traceback is the finding
            error = err
    return Outcome(code, stderr.getvalue(), reached, error)


def problems(module: str, values: dict[str, str], outcome: Outcome) -> list[str]:
    options = SPEC[module][1]
    bad = [name for name, text in values.items() if not options[name].admits(text)]
    if outcome.error is not None:
        return [f"traceback: {type(outcome.error).__name__}: {outcome.error}"]
    if outcome.reached:
        return [f"reached the model with {name} {values[name]!r}" for name in bad]
    if outcome.code != 2:
        return [f"exit code {outcome.code}: {outcome.stderr[-300:]!r}"]
    lines = outcome.stderr.strip().splitlines()
    found = [] if len(lines) == 1 else [f"not one line on stderr: {outcome.stderr[-400:]!r}"]
    if bad and not any(name in outcome.stderr for name in bad):
        found.append(f"the refusal names none of {bad}: {outcome.stderr.strip()!r}")
    return found


def argv_of(module: str, values: dict[str, str], folder: Path, image: Path) -> list[str]:
    base = list(SPEC[module][0])
    if module.startswith("probes."):
        base += ["--image", str(image), "--model", "tiny-llava", "--device", "cpu"]
    elif module in TRAINERS:
        base += ["--out", str(folder / "tiny")]
    else:
        base += ["--model", "tiny-llava", "--device", "cpu", "--out", str(folder / "run"),
                 "--overwrite"]
    for name, text in values.items():
        base.append(f"{name}={text}")  # "=": a value starting with '-' is still this option's
    return base


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cell=cells())
def test_numeric_options_are_checked_when_parsed(cell, stubs):
    folder, image = stubs
    module, _, values = cell
    outcome = run_cell(module, argv_of(module, values, folder, image))
    found = problems(module, values, outcome)
    assert not found, f"python -m {module} {values}: {found}"


@pytest.mark.parametrize("module", sorted(SPEC))
def test_every_bound_of_every_option(module, stubs):
    """Each option alone at each side of each bound and malformed: the same rules, every
    option of every CLI (the generated cells above mix them)."""
    folder, image = stubs
    found = []
    for name, spec in SPEC[module][1].items():
        for text in _edges(spec):
            values = {name: text}
            found += problems(module, values, run_cell(module, argv_of(module, values,
                                                                       folder, image)))
    assert not found, f"python -m {module}: {found}"


def _edges(spec) -> list[str]:
    if isinstance(spec, LayerList):
        return ["0", "2,3", "-1", "1,-2", "", ",", "a", "1.5"]
    if isinstance(spec, HeadList):
        return ["0.0", "3.1,5.0", "-1.0", "1.-2", "3", "", ",", "a.b", "1.2.3"]
    if isinstance(spec, Multiple):
        return ["0", str(spec.of - 1), str(spec.of), str(spec.of + 1), str(2 * spec.of), "a"]
    if isinstance(spec, Shard):
        return ["0/1", "1/3", "3/3", "-1/2", "1/0", "a", "1/2/3"]
    edges = ["abc", "nan", "inf", "-inf", ""]
    for bound in (spec.low, spec.high):
        if math.isfinite(bound):
            edges += ([str(int(bound) + d) for d in (-1, 0, 1)] if spec.whole
                      else [repr(bound + d) for d in (-1e-6, 0.0, 1e-6)])
    if spec.whole:
        edges += ["1.5", "9" * 30]
    return edges
