"""The shipped notebooks, executed as a researcher runs them: top to bottom in a fresh Jupyter
kernel (the kernel's own matplotlib backend, the inline one; the notebook's folder as working
directory; this checkout's code first on the path). Each must run without an error and still
show every image its committed copy shows (a plot cell that shows ``<Figure size ...>`` instead
fails), and no output may carry tqdm's "IProgress not found" warning.

The committed notebooks carry their outputs, so a code host shows the figures. To regenerate
them after changing a notebook or a figure: ``make notebooks`` (which runs
``python -m tests.test_notebooks --write``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IMAGE = "image/png"
WIDGET = "application/vnd.jupyter.widget-view+json"
NO_WIDGETS = "IProgress not found"  # tqdm.auto's warning when ipywidgets is missing
OLD_BUG = 'import matplotlib; matplotlib.use("Agg")'  # what figures/style.py did on import


def kernel_environment() -> dict[str, str]:
    """The environment of a researcher's kernel: this checkout's code first on the path, this
    Python's ``python`` first on PATH (the kernel spec starts ``python``), and no MPLBACKEND
    (ipykernel then names the inline backend, as in Jupyter)."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def execute(notebook: nbformat.NotebookNode, directory: Path) -> nbformat.NotebookNode:
    """A copy of ``notebook`` run top to bottom in a fresh kernel started in ``directory``; a
    cell that raises stops the run and leaves its error in that cell's outputs."""
    ran = copy.deepcopy(notebook)
    client = NotebookClient(ran, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(directory)}})
    try:
        client.execute(env=kernel_environment())
    except CellExecutionError:
        pass  # the error is in the cell's outputs, where check() reports it
    return ran


def has_image(cell: nbformat.NotebookNode) -> bool:
    return any(IMAGE in output.get("data", {}) for output in cell.get("outputs", []))


def output_text(output: nbformat.NotebookNode) -> str:
    """Everything an output shows as text: a stream, a traceback, a plain-text repr."""
    return "\n".join([output.get("text", ""), *output.get("traceback", []),
                      str(output.get("data", {}).get("text/plain", ""))])


def check(committed: nbformat.NotebookNode, ran: nbformat.NotebookNode) -> list[str]:
    """What is wrong with ``ran`` (the committed notebook executed again), one line each: a
    cell that raised or did not run, an image the committed notebook shows and the run does
    not, no image at all in the committed copy, tqdm's missing-widgets warning."""
    problems = []
    pairs = [(i, old, new) for i, (old, new) in enumerate(zip(committed.cells, ran.cells))
             if old.cell_type == "code"]
    if not any(has_image(old) for _, old, _ in pairs):
        problems.append("the committed notebook shows no image (run `make notebooks`)")
    for i, old, new in pairs:
        if any(output.output_type == "error" for output in new.outputs):
            error = next(o for o in new.outputs if o.output_type == "error")
            problems.append(f"cell {i} raised {error.ename}: {error.evalue}")
        elif new.get("execution_count") is None and new.source.strip():
            problems.append(f"cell {i} did not run")
        if has_image(old) and not has_image(new):
            shown = " | ".join(output_text(o).strip() for o in new.outputs)[:120]
            problems.append(f"cell {i} shows no image (it shows: {shown or 'nothing'})")
        if any(NO_WIDGETS in output_text(output) for output in new.outputs):
            problems.append(f"cell {i} prints tqdm's {NO_WIDGETS!r} warning")
    return problems


def with_old_bug(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy whose first code cell first selects Agg, as importing figures used to."""
    broken = copy.deepcopy(notebook)
    first = next(cell for cell in broken.cells if cell.cell_type == "code")
    first.source = f"{OLD_BUG}\n{first.source}"
    return broken


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_and_shows_its_figures(path):
    committed = nbformat.read(path, as_version=4)
    assert check(committed, execute(committed, path.parent)) == []


def test_the_shipped_notebooks_are_found():
    assert {p.stem for p in NOTEBOOKS} >= {"layer_masking", "attention_evolution",
                                           "nnsight_and_lens"}


def test_check_reports_figures_lost_to_the_agg_backend():
    """The old bug (Agg chosen before the figures are drawn) turns every figure into the text
    ``<Figure size ...>``: the check must name each of those cells."""
    path = ROOT / "notebooks" / "layer_masking.ipynb"
    committed = nbformat.read(path, as_version=4)
    plot_cells = [i for i, cell in enumerate(committed.cells) if has_image(cell)]
    assert plot_cells, "the committed notebook shows its figures"
    problems = check(committed, execute(with_old_bug(committed), path.parent))
    assert [problem.split(" (")[0] for problem in problems] == [
        f"cell {i} shows no image" for i in plot_cells], problems
    assert all("it shows: <Figure size" in problem for problem in problems), problems


def test_check_reports_errors_missing_images_and_the_widget_warning():
    """The check itself, on hand-made outputs: each kind of problem is named."""
    image = nbformat.v4.new_output("display_data", data={IMAGE: "iVBOR", "text/plain": "<F>"})
    cells = [nbformat.v4.new_code_cell("figure", outputs=[image], execution_count=1),
             nbformat.v4.new_code_cell("1 / 0", outputs=[], execution_count=2)]
    committed = nbformat.v4.new_notebook(cells=cells)
    ran = copy.deepcopy(committed)
    ran.cells[0].outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "<Figure size 700x300>"},
                               execution_count=1),
        nbformat.v4.new_output("stream", name="stderr", text=f"TqdmWarning: {NO_WIDGETS}."),
    ]
    ran.cells[1].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError",
                                                   evalue="division by zero", traceback=[])]
    assert check(committed, committed) == []
    assert check(committed, ran) == [
        "cell 0 shows no image (it shows: <Figure size 700x300> | TqdmWarning: IProgress not "
        "found.)",
        f"cell 0 prints tqdm's {NO_WIDGETS!r} warning",
        "cell 1 raised ZeroDivisionError: division by zero",
    ]
    no_images = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    assert check(no_images, no_images)[0].startswith("the committed notebook shows no image")


# The backend: importing the packages picks none (a notebook keeps its inline one); each
# command-line program that draws picks the file backend, Agg, itself.

INLINE = "module://matplotlib_inline.backend_inline"
IMPORT_ALL = """
import importlib, pkgutil, matplotlib
before = matplotlib.get_backend(auto_select=False)
for package in ("probes", "analyses", "figures"):
    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(module.name)
print(before, matplotlib.get_backend(auto_select=False))
"""
# each CLI that draws, with input it refuses only after it has started (exit 2)
CLIS = [(f"analyses.{name}.__main__", ["--resume", "--overwrite"])
        for name in ("attention_evolution", "attenuation", "contrastive_attention", "evaluate",
                     "layer_masking", "token_importance", "train_vif")]
CLIS += [("analyses.layer_masking.__main__", ["merge", "no-such-shard", "--out", "merged"]),
         ("analyses.merge", ["no-such-shard", "--out", "merged"]),
         ("figures.paper", ["no-such-run"])]
EACH_CLI = """
import importlib, json, sys, matplotlib
from probes.cli import run_cli
picked = {}
for module, argv in json.loads(sys.argv[1]):
    matplotlib.use("pdf")  # any backend but Agg
    code = run_cli(importlib.import_module(module).main, argv)
    picked[" ".join([module, *argv])] = (code, matplotlib.get_backend().lower())
print(json.dumps(picked))
"""


def python(script: str, *argv: str, cwd: Path, mplbackend: str | None) -> str:
    """Run ``script`` in a fresh headless Python (no DISPLAY) with MPLBACKEND as given."""
    env = {k: v for k, v in kernel_environment().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if mplbackend is not None:
        env["MPLBACKEND"] = mplbackend
    done = subprocess.run([sys.executable, "-c", script, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("mplbackend", [None, INLINE])
def test_importing_the_packages_picks_no_backend(mplbackend, tmp_path):
    assert python(IMPORT_ALL, cwd=tmp_path, mplbackend=mplbackend) == f"{mplbackend} {mplbackend}"


def test_every_cli_that_draws_picks_the_file_backend(tmp_path):
    picked = json.loads(python(EACH_CLI, json.dumps(CLIS), cwd=tmp_path, mplbackend=INLINE))
    assert picked == {" ".join([module, *argv]): [2, "agg"] for module, argv in CLIS}


def test_a_cli_run_writes_its_pngs_headless(tmp_path):
    """A real run on the embedded model in a process without a display, whose environment
    names the inline backend: the figures are PNG files, drawn with Agg."""
    script = ("import sys, matplotlib; from probes.cli import run_cli; "
              "from analyses.layer_masking.__main__ import main; "
              "code = run_cli(main, sys.argv[1:]); print(code, matplotlib.get_backend().lower())")
    assert python(script, "--limit", "2", "--bootstrap", "20", "--out", "run", cwd=tmp_path,
                  mplbackend=INLINE) == "0 agg"
    pngs = sorted((tmp_path / "run").glob("*.png"))
    assert [png.stem for png in pngs] == ["layer_effect", "layer_heatmap", "layer_metrics"]
    assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)


def without_progress_bars(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``notebook`` without its progress-bar widgets: they are live only (a saved one shows
    its first frame, "0%", wherever widgets are not rendered, as on code hosts)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs
                            if WIDGET not in output.get("data", {})]
    return notebook


def write(paths: list[Path]) -> int:
    """Execute each notebook and save it with its outputs (``make notebooks``)."""
    status = 0
    for path in paths:
        ran = without_progress_bars(execute(nbformat.read(path, as_version=4), path.parent))
        problems = check(ran, ran)
        nbformat.write(ran, path)
        size = path.stat().st_size / 1e6
        sys.stdout.write(f"{path.relative_to(ROOT)}: {size:.2f} MB"
                         + "".join(f"\n  {problem}" for problem in problems) + "\n")
        status = status or int(bool(problems))
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.test_notebooks",
                                     description="Execute the notebooks and save their outputs.")
    parser.add_argument("--write", action="store_true", required=True,
                        help="run each notebook and write it back with its outputs")
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    sys.exit(write([path.resolve() for path in parser.parse_args().notebooks]))
