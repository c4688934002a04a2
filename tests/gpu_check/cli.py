"""``python -m tests.gpu_check``: the environment first, then each family's rows as each part
finishes (printed, flushed, and appended to ``OUT/<family>.jsonl``), every part guarded: an
out-of-memory error or any other failure is a row saying so, and the run goes on."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from probes.cli import run_cli
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.run import run_knockouts

from . import __doc__ as PACKAGE_DOC
from .bench import (
    Context,
    Meter,
    bench_aif,
    bench_layer_masking,
    bench_recording,
    bench_sweep,
    format_table,
)
from .checks import (
    BFLOAT16,
    FLOAT32,
    RED,
    SWEEP_FLOW,
    References,
    build_inputs,
    check_parts,
    naive_logits,
)
from .environment import (
    BACKENDS,
    DEFAULT_BACKENDS,
    backend,
    backend_unavailable,
    describe,
    device_name,
    environment_line,
    first_line,
    kernels_used,
    select_device,
)
from .models import REAL, load_family

FAILING = ("FAIL", "OOM", "error", "skipped")


class Report:
    """Where rows go: printed (flushed) and appended to ``out/<family>.jsonl`` (flushed and
    synced) as each part finishes. Parts run through :meth:`guarded`."""

    def __init__(self, out: Path, budget: float | None = None, inject_oom: str | None = None) -> None:
        self.out, self.budget, self.inject_oom = out, budget, inject_oom
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        out.mkdir(parents=True, exist_ok=True)

    def environment(self, info: dict) -> None:
        (self.out / "environment.json").write_text(json.dumps(info, indent=1) + "\n")
        print(environment_line(info), flush=True)

    def begin(self, family: str) -> None:
        (self.out / f"{family}.jsonl").write_text("")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.out / f"{row['family']}.jsonl", "a") as file:
            file.write(json.dumps(row) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            line = format_row(row)
        except (KeyError, TypeError, ValueError):  # a row of an unforeseen form: as it is
            line = json.dumps(row)
        print(line, flush=True)

    def guarded(self, family: str, part: str, backend_name: str,
                function: Callable[[], list[dict]]) -> bool:
        """Run one part and write its rows, or one row saying why there are none. True when
        the part ran to its end."""
        where = {"family": family, "backend": backend_name, "part": part}
        elapsed = time.perf_counter() - self.start
        if self.budget is not None and elapsed > self.budget:
            self.add({**where, "kind": "failure", "status": "skipped",
                      "detail": f"not started: {elapsed:.0f} s of the {self.budget:.0f} s budget spent"})
            return False
        start = time.perf_counter()
        try:
            if self.inject_oom in (family, f"{family}/{part}") and (part == "build" or "/" in self.inject_oom):
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (injected by --inject-oom {self.inject_oom})")
            rows = function()
        except Exception as error:  # noqa: BLE001 - a guard: every failure becomes a row
            status = "OOM" if is_out_of_memory(error) else "error"
            detail = f"{type(error).__name__}: {first_line(error)}"
            del error
            memory = release_memory()
            self.add({**where, "kind": "failure", "status": status,
                      "detail": detail + memory, "seconds": time.perf_counter() - start})
            return False
        seconds = time.perf_counter() - start
        for row in rows:
            self.add({**where, **row, "seconds": seconds})
        return True


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text \
        or "can't allocate memory" in text


def release_memory() -> str:
    """Collect garbage and hand cached GPU memory back; say what stays allocated."""
    gc.collect()
    if not torch.cuda.is_available():
        return ""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return (f" ({torch.cuda.memory_allocated() / 2**30:.1f} GiB still allocated, "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free)")


def format_row(row: dict) -> str:
    head = f"[{row['family']} {row['backend']} {row['part']}] {row['status']}"
    seconds = f" ({row['seconds']:.1f} s)" if "seconds" in row else ""
    if row["kind"] == "check":
        seen = [f"effect {row['effect']:.2e}"] if row.get("effect") is not None else []
        if row.get("shift") is not None:
            seen.append(f"a 1-layer shift {row['shift']:.2e} ({row['shift'] / row['tolerance']:.1f}x tol)")
        return (f"{head} {row['name']}: worst {row['worst']:.2e}, tol {row['tolerance']:.0e}, "
                f"margin {row['margin']:.1f}x; {'; '.join(seen) or 'no fault measure'}; "
                f"{row['detail']}{seconds}")
    if row["kind"] == "bench":
        spread = (f", spread {row['baseline_spread']:.0%} / {row['ours_spread']:.0%} of "
                  f"{row['runs']} runs" if "baseline_spread" in row else "")
        return (f"{head} {row['name']}: baseline {row['baseline']:.4g} {row['unit']}, ours "
                f"{row['ours']:.4g} {row['unit']}, {row['ratio']:.2f}x{spread}{seconds}")
    return f"{head} {row.get('name', '')}{': ' if 'name' in row else ''}{row['detail']}{seconds}"


def format_checks(rows: Sequence[dict]) -> str:
    """The check rows (and failures) as a Markdown table."""
    lines = ["| family | backend | check | status | worst | tolerance | margin | 1-layer shift |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row["kind"] == "check":
            shift = "" if row.get("shift") is None else f"{row['shift'] / row['tolerance']:.1f}x tol"
            lines.append(f"| {row['family']} | {row['backend']} | {row['name']} | {row['status']} | "
                         f"{row['worst']:.2e} | {row['tolerance']:.0e} | {row['margin']:.1f}x | "
                         f"{shift} |")
        elif row["kind"] in ("failure", "kernels"):
            lines.append(f"| {row['family']} | {row['backend']} | {row['part']} | {row['status']} | "
                         f"{row['detail']} | | | |")
    return "\n".join(lines) + "\n"


def read_rows(folder: Path) -> list[dict]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of gpu-check results.")
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- one family
def kernel_rows(loaded, inputs) -> list[dict]:
    """Which sdpa kernel a clean forward, a masked forward and the executor's suffix took."""
    n = loaded.adapter.num_layers
    masked = Knockout(parse_flows(SWEEP_FLOW), tuple(range(n)))
    found = {"clean forward": kernels_used(lambda: naive_logits(loaded, inputs, [None])),
             "masked forward": kernels_used(lambda: naive_logits(loaded, inputs, [masked])),
             "executor": kernels_used(lambda: run_knockouts(loaded, inputs, [masked]))}
    detail = "; ".join(f"{what}: " + (", ".join(f"{kernel} x{count}" for kernel, count
                                                 in sorted(counts.items())) or "none")
                       for what, counts in found.items())
    return [{"kind": "kernels", "name": "sdpa calls by kernel (vision tower included)",
             "status": "ok", "detail": detail, "kernels": {k: dict(v) for k, v in found.items()}}]


def run_family(report: Report, family: str, device: torch.device, tiny: bool,
               backends: Sequence[str], meter: Meter, bench: bool) -> None:
    report.begin(family)
    built: dict = {}

    def build() -> list[dict]:
        loaded, label, shapes = load_family(family, device, tiny)
        built.update(loaded=loaded, label=label, shapes=shapes)
        gb = (torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else
              sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 1e9)
        built["machine"] = f"{device_name(device)}, {loaded.dtype}, {gb:.1f} GB of weights"
        return [{"kind": "build", "name": label, "status": "ok",
                 "detail": f"{loaded.adapter.num_layers} layers, {built['machine']}"}]

    if not report.guarded(family, "build", "-", build):
        return
    loaded, shapes = built["loaded"], built["shapes"]
    tolerance = FLOAT32 if loaded.dtype == torch.float32 else BFLOAT16
    inputs = build_inputs(loaded, Image.new("RGB", shapes.check, RED))
    references = References(loaded, inputs)
    for name in backends:
        reason = backend_unavailable(name, device, loaded.dtype)
        if reason is not None:
            report.add({"family": family, "backend": name, "part": "backend", "kind": "failure",
                        "status": "unavailable", "detail": reason})
            continue
        parts = {"kernels": lambda: kernel_rows(loaded, inputs),
                 **check_parts(family, loaded, inputs, references, tolerance, shapes)}
        for part, function in parts.items():
            with backend(name):
                report.guarded(family, part, name, function)
    references = None  # the eager maps: not needed by the benchmarks
    if bench:
        context = Context(built["label"], built["machine"])
        image = Image.new("RGB", shapes.bench, RED)
        parts = {"bench-sweep": lambda: bench_sweep(loaded, meter, image, context),
                 "bench-recording": lambda: bench_recording(
                     loaded, meter, Image.new("RGB", shapes.record, RED), context),
                 "bench-aif": lambda: bench_aif(loaded, meter, image, shapes.steps, context)}
        if family == "llava":
            parts["bench-layer-masking"] = lambda: bench_layer_masking(loaded, meter, image, context)
        for part, function in parts.items():
            report.guarded(family, part, "default", function)
    built.clear()
    loaded = parts = None
    release_memory()


# ----------------------------------------------------------------------------------- the CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu_check",
                                     description=PACKAGE_DOC.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=list(REAL),
                        help="one model family (repeatable; default: all three, in turn)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"),
                        help="folder for environment.json and <family>.jsonl (default: %(default)s)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny zoo models in float32 instead of the 7B architectures")
    parser.add_argument("--backend", action="append", choices=list(BACKENDS), dest="backends",
                        help="sdpa backend of the checks (repeatable; default: "
                             f"{', '.join(DEFAULT_BACKENDS)})")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per side after one warm-up (default: %(default)s)")
    parser.add_argument("--no-bench", dest="bench", action="store_false",
                        help="the checks only, no timings")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which parts not yet started are skipped (a row each)")
    parser.add_argument("--table", type=Path, metavar="DIR",
                        help="print the Markdown tables of the rows in DIR and exit")
    parser.add_argument("--inject-oom", metavar="FAMILY[/PART]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table is not None:
        rows = read_rows(args.table)
        print(format_checks(rows) + "\n" + format_table(rows), end="", flush=True)
        return 0
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1.")
    device = select_device(args.device, args.tiny)
    report = Report(args.out, args.budget, args.inject_oom)
    report.environment(describe(device))
    meter = Meter(device, args.repeats)
    for family in args.family or list(REAL):
        run_family(report, family, device, args.tiny, args.backends or DEFAULT_BACKENDS, meter,
                   args.bench)
    bad = [row for row in report.rows if row["status"] in FAILING]
    checks = [row for row in report.rows if row["kind"] == "check"]
    print(f"{len(report.rows)} rows, {sum(r['status'] == 'ok' for r in checks)}/{len(checks)} "
          f"checks passed, {len(bad)} rows failed, OOM, errored or skipped; rows in "
          f"{args.out}/", flush=True)
    return 1 if bad else 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
