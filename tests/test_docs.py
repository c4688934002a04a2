"""Every code block of README.md and docs/*.md is run or checked.

- ```python blocks run in order, one namespace per page, in a temporary folder, in one
  subprocess per page (with the page's shell commands, in page order).
- ```sh / ```bash blocks: every command is ``python -m MODULE ...`` (``python``, ``python3`` or
  ``.venv/bin/python``) and runs for real on the embedded model in that folder, with
  ``--limit`` set to LIMIT (added where the command accepts it and has none) and ``--steps``
  to STEPS, so that the page's examples stay fast.
- A block that cannot run here (a 7B checkpoint, a GPU, a benchmark file, a cluster, a make
  target) is marked by ``<!-- not-run: REASON -->`` on the line before it. Its commands are
  still checked: each ``python -m MODULE`` must name a module whose argparse parser accepts the
  options (the parser runs; the command does not), each ``make TARGET`` a Makefile target, and
  a not-run Python block must compile.
- ```text blocks are output and are not run; ```json / ```jsonl blocks must parse.

Any other block (no language, another language, a shell command that is none of the above) fails
the test: label it, or annotate it.

``python tests/test_docs.py --drive STEPS.json`` is the subprocess that runs a page's steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import linecache
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = "8"  # samples per analysis command: enough for four shards of two
STEPS = "2"  # training steps per training command
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"sh", "bash", "shell"}
TEXT_LANGS = {"text", "output"}
DATA_LANGS = {"json", "jsonl"}
PYTHONS = {"python", "python3", ".venv/bin/python"}


def pages() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)
    return [ROOT / "README.md", *docs]


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason given by the annotation

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def extract(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the not-run annotation just before each."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        note = NOT_RUN.match(previous)
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(page, i - len(body), lang.lower(), "\n".join(body) + "\n",
                            note.group(1) if note else None))
        i += 1
    return blocks


@dataclass
class Command:
    kind: str  # "module", "make", "other"
    argv: list[str]  # module: [MODULE, args...]; make: targets; other: the words
    where: str


def commands(block: Block) -> list[Command]:
    """The shell commands of a block: continuation lines joined, comments dropped, ``NAME=value``
    assignments expanded in the lines after them; a ``python -m`` inside another command (``ray
    job submit ... -- python -m ...``) is found too."""
    variables: dict[str, str] = {}
    found = []
    logical, start = "", 0
    for number, line in enumerate(block.code.splitlines(), start=block.line + 1):
        if not logical:
            start = number
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        words = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m[1], m[0]), logical),
                            comments=True)
        logical = ""
        where = f"{block.page}:{start}"
        if len(words) == 1 and re.fullmatch(r"\w+=.*", words[0]):
            name, _, value = words[0].partition("=")
            variables[name] = value
        elif words and words[0] == "make":
            found.append(Command("make", words[1:], where))
        elif words:
            at = next((k for k in range(len(words) - 1)
                       if words[k] in PYTHONS and words[k + 1] == "-m"), None)
            if at is not None and len(words) > at + 2:
                found.append(Command("module", words[at + 2:], where))
            else:
                found.append(Command("other", words, where))
    return found


class _Parsed(Exception):
    pass


def run_main(module: str) -> None:
    """``python -m module`` in this process (``sys.argv`` set by the caller)."""
    name = f"{module}.__main__"
    imported = sys.modules.pop(name, None)  # a package's __main__ runs afresh, as from a shell
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:  # later tests that imported the module keep the one their names point into
        if imported is not None:
            sys.modules[name] = imported


def parse_only(module: str, args: list[str]) -> str | None:
    """Run ``python -m module args`` up to its argparse parser and no further: None when the
    module exists and its parser accepts the arguments, else why not (argparse's message)."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    err = io.StringIO()
    saved_argv = sys.argv[:]
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        sys.argv = [module, *args]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            run_main(module)
    except _Parsed:
        return None
    except SystemExit as exit_:
        return f"exit {exit_.code}: {err.getvalue().strip().splitlines()[-1:] or ''}"
    except ImportError as error:
        return f"no module {module}: {error}"
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved_argv
    return "the module ran to the end without parsing its arguments"


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m for line in text.splitlines()
            for m in re.findall(r"^([\w.-]+)\s*:(?!=)", line)}


def with_small_limits(module: str, args: list[str]) -> list[str]:
    """The arguments with ``--limit`` LIMIT and ``--steps`` STEPS (replaced, or ``--limit``
    added where the parser accepts it)."""
    args = list(args)
    for option, value in (("--limit", LIMIT), ("--steps", STEPS)):
        if option in args:
            args[args.index(option) + 1] = value
    if "--limit" not in args and parse_only(module, [*args, "--limit", LIMIT]) is None:
        args += ["--limit", LIMIT]
    return args


def plan(text: str, page: str) -> tuple[list[str], list[dict]]:
    """The problems of a page's blocks (unlabelled, unsupported, not parsing) and the steps
    that run: ``{"python": code}`` or ``{"module": name, "args": [...]}``, each with ``where``."""
    problems, steps = [], []
    for block in extract(text, page):
        if block.lang in TEXT_LANGS:
            continue
        if block.lang in DATA_LANGS:
            rows = block.code.splitlines() if block.lang == "jsonl" else [block.code]
            for row in filter(str.strip, rows):
                try:
                    json.loads(row)
                except ValueError as error:
                    problems.append(f"{block.where}: not {block.lang}: {error}")
        elif block.lang in PYTHON_LANGS:
            if block.not_run:
                try:
                    compile(block.code, block.where, "exec")
                except SyntaxError as error:
                    problems.append(f"{block.where}: does not compile: {error}")
            else:
                steps.append({"python": block.code, "where": block.where})
        elif block.lang in SHELL_LANGS:
            for command in commands(block):
                if command.kind == "make":
                    missing = set(command.argv) - make_targets()
                    if missing:
                        problems.append(f"{command.where}: no make target {sorted(missing)}")
                    elif not block.not_run:
                        problems.append(f"{command.where}: make is not run here; annotate")
                elif command.kind == "module":
                    module, args = command.argv[0], command.argv[1:]
                    why = parse_only(module, args)
                    if why:
                        problems.append(f"{command.where}: python -m {module}: {why}")
                    elif not block.not_run:
                        steps.append({"module": module, "args": with_small_limits(module, args),
                                      "where": command.where})
                elif not block.not_run:
                    problems.append(f"{command.where}: cannot run {command.argv[0]!r}; annotate")
        else:
            problems.append(f"{block.where}: a block in {block.lang or 'no language'}: label it "
                            f"python, sh, text, json or jsonl")
    return problems, steps


def drive(steps_file: str) -> int:
    """Run the steps in this process, in the current folder; stop at the first that fails."""
    steps = json.loads(Path(steps_file).read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "__docs__"}
    for step in steps:
        print(f"=== {step['where']}", flush=True)
        if "python" in step:
            code = step["python"]
            # a source to read back, as for a file (nnsight reads the body of a `with model.trace`)
            linecache.cache[step["where"]] = (len(code), None, code.splitlines(True), step["where"])
            exec(compile(code, step["where"], "exec"), namespace)
            continue
        sys.argv = [step["module"], *step["args"]]
        try:
            run_main(step["module"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                print(f"FAILED {step['where']}: exit {exit_.code}", flush=True)
                return 1
    return 0


PAGES = pages()
IDS = [p.relative_to(ROOT).as_posix() for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_block_is_run_or_checked(page, tmp_path):
    problems, steps = plan(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())
    assert not problems, "\n".join(problems)
    if not steps:
        return
    (tmp_path / "steps.json").write_text(json.dumps(steps), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "MPLBACKEND": "Agg"}
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(Path(__file__)), "--drive", str(tmp_path / "steps.json")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


def test_the_pages_are_in_the_site_navigation():
    yaml = pytest.importorskip("yaml")
    nav = json.dumps(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    missing = [p for p in IDS[1:] if p.removeprefix("docs/") not in nav]
    assert not missing


def test_the_checker_reads_annotations_and_refuses_what_it_cannot_run():
    text = "\n".join([
        "<!-- not-run: needs a GPU -->",
        "```sh",
        "python -m analyses.layer_masking --model llava \\",
        "    --device cuda --limit 5",
        "```",
        "```",
        "plain",
        "```",
        "```sh",
        "hf download x",
        "make no-such-target",
        "```",
        "<!-- not-run: renamed -->",
        "```bash",
        "python -m analyses.layer_masking --no-such-option 3",
        "python -m analyses.no_such_analysis",
        "```",
    ]) + "\n"
    blocks = extract(text, "page.md")
    assert [(b.lang, b.not_run, b.line) for b in blocks] == [
        ("sh", "needs a GPU", 2), ("", None, 6), ("sh", None, 9), ("bash", "renamed", 14)]
    assert [c.argv for c in commands(blocks[0])] == [
        ["analyses.layer_masking", "--model", "llava", "--device", "cuda", "--limit", "5"]]
    problems, steps = plan(text, "page.md")
    assert steps == []
    problems = [p.split(": ", 1)[1] for p in problems]
    assert problems[0].startswith("a block in no language")
    assert problems[1] == "cannot run 'hf'; annotate"
    assert problems[2] == "no make target ['no-such-target']"
    assert "unrecognized arguments: --no-such-option 3" in problems[3]
    assert problems[4].startswith("python -m analyses.no_such_analysis: no module")
    assert len(problems) == 5


def test_small_limits_replace_and_add():
    assert with_small_limits("analyses.layer_masking", ["--limit", "200"]) == ["--limit", LIMIT]
    assert with_small_limits("analyses.layer_masking", []) == ["--limit", LIMIT]
    assert with_small_limits("analyses.merge", ["a", "--out", "b"]) == ["a", "--out", "b"]
    assert with_small_limits("analyses.train_vif", ["--steps", "800"])[:2] == ["--steps", STEPS]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--drive"]:
        sys.exit(drive(sys.argv[2]))
