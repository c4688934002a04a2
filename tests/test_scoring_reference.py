"""analyses.scoring against the reference harness, lmms-eval 0.7.3, reply class by reply class.

The harness's scoring code is loaded by file path from its release wheel (``make test``
downloads it into .cache/wheels; FUSIONLENS_LMMS_EVAL_WHEEL points elsewhere) with tiny
stand-ins for the few heavy imports. A reply reaches a task's ``process_results`` through
:func:`harness_sees` (lmms-eval strips every generated reply first), so each comparison below
is with the harness's whole path from reply to verdict. Samples are built by the real loaders
(tests/scoring_samples.py).

Each agreement test grades systematically generated replies both ways. Every reply whose
verdict differs must be explained by the documented deviation classes (docs/scoring.md): ours
equals the harness's verdict with the deviations undone, one after the other, and each class
is counted where undoing it changes the verdict; the counts must equal the agreement table of
docs/scoring.md. Each class also has one test of its own (``test_class_*``) that pins our
verdict and shows the harness's differs. Run with ``-s`` to see the counts."""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import re
import string
import sys
import types
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import scoring_samples as real

from analyses.scoring import BoxFrame, judge, summarize
from analyses.scoring.base import Verdict
from analyses.scoring.vqa import normalize_answer

WHEEL_NAME = "lmms_eval-0.7.3-py3-none-any.whl"
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "scoring.md"
LETTERS = "ABCD"  # what lmms-eval's MMStar and RealWorldQA tasks read, whatever the options
OPTIONS = ("cotton", "Blue", "a red car", "Dark green")  # A..D, with capital-letter traps
TASK_FILES = {
    "mcq": "lmms_eval/tasks/_task_utils/mcq_extract.py",
    "vqa": "lmms_eval/tasks/_task_utils/vqa_eval_metric.py",
    "mmstar": "lmms_eval/tasks/mmstar/utils.py",
    "realworldqa": "lmms_eval/tasks/realworldqa/utils.py",
    "textvqa": "lmms_eval/tasks/textvqa/utils.py",
    "countbench": "lmms_eval/tasks/countbench/utils.py",
    "pope": "lmms_eval/tasks/pope/utils.py",
    "vstar": "lmms_eval/tasks/vstar_bench/utils.py",
    "refcoco": "lmms_eval/tasks/refcoco_grounding/utils.py",
    "metrics": "lmms_eval/api/metrics.py",
}
TASK_PY = "lmms_eval/api/task.py"  # read as text only (importing it needs the whole harness)
STRIP_LINE = 'results = [res.strip() if res is not None else "" for res in results]'


def wheel_path() -> Path:
    return Path(os.environ.get("FUSIONLENS_LMMS_EVAL_WHEEL", ROOT / ".cache/wheels" / WHEEL_NAME))


def _fake(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _stand_ins(root: Path) -> dict[str, types.ModuleType]:
    """Packages that point into the extracted wheel without running their __init__, and tiny
    fakes for what the scoring modules import but never use in scoring."""
    quiet = SimpleNamespace(debug=lambda *a, **k: None, info=lambda *a, **k: None,
                            warning=lambda *a, **k: None)
    passthrough = lambda *a, **k: (lambda function: function)  # noqa: E731
    modules = {}
    for package in ("lmms_eval", "lmms_eval.api", "lmms_eval.tasks", "lmms_eval.filters",
                    "lmms_eval.tasks._task_utils"):
        modules[package] = _fake(package, __path__=[str(root / package.replace(".", "/"))])
    modules["loguru"] = _fake("loguru", logger=quiet)
    modules["sacrebleu"] = _fake("sacrebleu")
    modules["lmms_eval.api.registry"] = _fake(
        "lmms_eval.api.registry", register_metric=passthrough, register_aggregation=passthrough)
    modules["lmms_eval.filters.extraction"] = _fake(
        "lmms_eval.filters.extraction", ExtendedRegexFilter=object)
    modules["lmms_eval.filters.transformation"] = _fake(
        "lmms_eval.filters.transformation", MapFilter=object)
    modules["lmms_eval.tasks._task_utils.file_utils"] = _fake(
        "lmms_eval.tasks._task_utils.file_utils", generate_submission_file=None)
    return modules


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    wheel = wheel_path()
    if not wheel.is_file():
        pytest.fail(f"lmms-eval's wheel is missing at {wheel}: `make test` downloads it "
                    f"(or run `make .cache/wheels/{WHEEL_NAME}`).")
    root = tmp_path_factory.mktemp("lmms_eval")
    with zipfile.ZipFile(wheel) as archive:
        for member in (*TASK_FILES.values(), TASK_PY):
            archive.extract(member, root)
    stand_ins = _stand_ins(root)
    names = set(stand_ins) | {m.removesuffix(".py").replace("/", ".") for m in TASK_FILES.values()}
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    sys.modules.update(stand_ins)
    loaded = {"task_source": (root / TASK_PY).read_text()}
    try:
        for key, member in TASK_FILES.items():
            name = member.removesuffix(".py").replace("/", ".")
            spec = importlib.util.spec_from_file_location(name, root / member)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            with warnings.catch_warnings():  # their source has an invalid escape ("\\s")
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", SyntaxWarning)
                spec.loader.exec_module(module)
            loaded[key] = module
        yield SimpleNamespace(**loaded)
    finally:  # the harness's modules and stand-ins leave no trace in this process
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def harness_sees(reply: str) -> str:
    """What a task's ``process_results`` gets from lmms-eval: the generated reply stripped
    (``ConfigurableTask.process_results``, for every ``generate_until`` task)."""
    return reply.strip()


def test_the_harness_strips_every_reply_before_its_task(harness):
    """:func:`harness_sees` is the harness's own first step: ConfigurableTask.process_results
    strips each generated reply, then calls the task's process_results (or its metric)."""
    source = harness.task_source
    body = source[source.index("class ConfigurableTask("):]
    body = body[body.index("    def process_results(self, doc, results, full_docs=None):"):]
    body = body[:body.index("\n    def ", 10)]
    strip_at = body.index(STRIP_LINE)
    assert strip_at < body.index("return self.config.process_results(doc, results, **kwargs)")
    assert 'result = [res.strip() if res is not None else "" for res in results]' in body


# ---------------------------------------------------------------- the documented table

def documented_counts() -> dict[str, dict[str, str]]:
    """The rows of docs/scoring.md's agreement table, by their first cell."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("<!-- agreement table -->"):]
    rows = {}
    for line in table.splitlines()[1:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if cells[0] and not set(cells[0]) <= set("-: "):
            rows[cells[0]] = cells
    header = rows.pop("check")
    return {name: dict(zip(header, cells)) for name, cells in rows.items()}


def check_documented(check: str, pairs: int, differ: int, by_class: Counter) -> None:
    """The counts of one agreement test equal its row of docs/scoring.md (and are printed):
    pairs graded, pairs whose verdicts differ, and per class the pairs whose verdict undoing
    that class changes."""
    classes = ", ".join(f"{name} {by_class[name]}" for name in sorted(by_class)) or "none"
    print(f"\n{check}: {pairs} pairs, {differ} verdicts differ; by class: {classes}")
    row = documented_counts()[check]
    assert (row["pairs"], row["verdicts differ"], row["by class"]) == (
        str(pairs), str(differ), classes), (check, row)


def agree_but_for(check: str, name: str, cases, theirs) -> None:
    """Grade each (sample, reply) of ``cases`` both ways, for a benchmark with one deviation
    class ``name``: ours must equal ``theirs(sample, reply, undo=True)``, the harness's
    verdict with the class undone; the counts must equal the docs' row ``check``."""
    pairs = differ = 0
    by_class = Counter()
    for sample, reply in cases:
        before, after = theirs(sample, reply), theirs(sample, reply, undo=True)
        by_class[name] += before != after
        ours = judge(reply, sample).score
        assert ours == after, (sample.answer, reply)
        pairs += 1
        differ += ours != before
    check_documented(check, pairs, differ, by_class)


# ---------------------------------------------------------------- samples, by the loaders

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Samples of every benchmark, built by their loaders from rows in the real layouts."""
    root = tmp_path_factory.mktemp("benchmarks")
    golds = [(n, gold) for n in (2, 3, 4) for gold in LETTERS[:n]]
    mmstar = real.load_rows(root, "mmstar", [real.mmstar_row(g, OPTIONS[:n], index=i)
                                        for i, (n, g) in enumerate(golds)])
    vstar = real.load_rows(root, "vstar", [real.vstar_row(g, OPTIONS[:n], question_id=i)
                                      for i, (n, g) in enumerate(golds) if n != 3])
    opens = ["0", "2", "Downhill", "left", "yes"]
    rwqa = real.load_rows(root, "realworldqa", [real.realworldqa_row(g, OPTIONS[:n]) for n, g in golds]
                     + [real.realworldqa_row(g) for g in opens])
    return SimpleNamespace(root=root, mmstar=mmstar, vstar=vstar, realworldqa=rwqa)


# ---------------------------------------------------------------- replies, generated

def wrapped(core: str) -> list[str]:
    return [core, f"{core}.", f" {core}\n", f'"{core}"', f"'{core}'", f"{core}!", f"({core})",
            f"**{core}**", f"{core};", f"{core}?"]


def letter_replies() -> list[str]:
    templates = [
        "{L}", "({L})", "{L}.", "{L})", "{L}:", "{l}", "{l})", "({l})", "{L}. {t}", "{L}: {t}",
        "{L}) {t}", "The answer is {L}.", "The answer is ({L}).", "the correct option is {L}",
        "Answer: {L}", "I choose {L}", "Option {L}", "{L} is correct", "It is {L}, not {M}.",
        "{L} or {M}", "{M}? No, {L}.", "Between {M} and {L}, {L}", "The answer is {t}",
        "{t}", "I think it's {L}", "{L}{M}", "{L}-{M}", "[{L}]", "{L}, because {t}",
        "Answer is {l}", "答案是{L}", "{T}", "Not {M} but {L}",
    ]
    replies = []
    for template, (first, second) in itertools.product(
            templates, itertools.permutations(LETTERS, 2)):
        option = OPTIONS[LETTERS.index(first)]
        core = template.format(L=first, l=first.lower(), M=second, t=option, T=option.upper())
        replies += wrapped(core)
    words = ["Cotton", "Blue", "Dark red", "A cat", "Apple", "DNA.", "USB", "Bob", "CD)", "Yes",
             "none", "", "   ", "ABCD", "E", "The image shows a dog.", "Dark green", "a red car"]
    for word in words:
        replies += wrapped(word)
    rng = random.Random(0)
    alphabet = "ABCDabcde ().:,!?'\"-xyz"
    replies += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
                for _ in range(1500)]
    return list(dict.fromkeys(replies))  # distinct, in order


# ---------------------------------------------------------------- multiple choice

def hide_in_words(reply: str, letters: str) -> str:
    """The reply with each choice letter that touches an ASCII letter lower-cased, so that
    lmms-eval's extractor sees only standalone letters (the letter-in-word class undone)."""
    return re.sub(rf"(?<=[A-Za-z])[{letters}]|[{letters}](?=[A-Za-z])",
                  lambda m: m.group().lower(), reply)


def option_named(reply: str, options) -> str:
    """The letter of the one option whose text the reply is (ends' punctuation, case and
    spaces ignored), else "" (the option-text class)."""
    said = reply.strip()
    for character in ",.!?;:'\"":
        said = said.strip(character)
    hits = [i for i, text in enumerate(options) if said.strip().lower() == text.lower()]
    return "ABCDEFGH"[hits[0]] if len(hits) == 1 else ""


def choice_steps(harness, reply: str, sample) -> list[tuple[str, str]]:
    """lmms-eval's letter for ``reply`` (A-D, as MMStar and RealWorldQA read), then with each
    deviation class undone in turn: (class, letter after undoing it). The last is ours."""
    letters = "ABCDEFGH"[:len(sample.choices)]
    seen = harness_sees(reply)
    mcq = harness.mcq.extract_mcq_answer
    mine = mcq(seen, list(letters))
    hidden = mcq(hide_in_words(seen, letters), list(letters))
    return [("harness", mcq(seen, list(LETTERS))), ("outside-options", mine),
            ("letter-in-word", hidden), ("option-text", hidden or option_named(seen,
                                                                               sample.choices))]


def attribute(steps: list[tuple[str, str]], gold: str, by_class: Counter) -> float:
    """Count each class whose undoing changes the verdict on ``gold``; the final verdict."""
    verdicts = [(name, float(letter == gold)) for name, letter in steps]
    for (_, before), (name, after) in zip(verdicts, verdicts[1:]):
        if before != after:
            by_class[name] += 1
    return verdicts[-1][1]


def test_mmstar_agrees_but_for_the_documented_classes(harness, data):
    pairs = differ = 0
    by_class = Counter()
    for sample, reply in itertools.product(data.mmstar, letter_replies()):
        doc = {"answer": sample.answer, "category": "c", "l2_category": sample.kind,
               "index": 0}
        theirs = harness.mmstar.mmstar_process_results(doc, [harness_sees(reply)])
        theirs = theirs["average"]["score"]
        ours = judge(reply, sample)
        steps = choice_steps(harness, reply, sample)
        assert float(steps[0][1] == sample.answer) == theirs
        assert ours.prediction == steps[-1][1], (sample.choices, reply)
        assert ours.score == attribute(steps, sample.answer, by_class)
        pairs += 1
        differ += ours.score != theirs
    check_documented("mmstar", pairs, differ, by_class)


def test_realworldqa_agrees_but_for_the_documented_classes(harness, data):
    pairs = differ = 0
    by_class = Counter()
    replies = list(dict.fromkeys(letter_replies()[::3] + [
        w for c in ["0", "1", "2", "zero", "Downhill", "downhill", "Uphill", "left",
                    "Left side", "yes", "No", "2 cars", "0.5", "3.0", "..."] for w in wrapped(c)]))
    for sample, reply in itertools.product(data.realworldqa, replies):
        theirs = harness.realworldqa.realworldqa_process_results(
            {"answer": sample.answer}, [harness_sees(reply)])["exact_match"]
        ours = judge(reply, sample)
        pairs += 1
        differ += ours.score != theirs
        if sample.choices:
            steps = choice_steps(harness, reply, sample)
            assert ours.score == attribute(steps, sample.answer, by_class), reply
        else:
            assert ours.score == theirs, (sample.answer, reply)
    check_documented("realworldqa", pairs, differ, by_class)


def test_class_letter_in_word(harness, data):
    """A capital inside a word is no choice: lmms-eval reads "Cotton" as C (any-occurrence
    fallback), "The answer is Blue" as B (phrase rule), "DNA." as A; ours reads nothing.
    The other way round, "CA" (no standalone letter) is A to lmms-eval, nothing to ours."""
    plain = ("w", "x", "y", "z")  # option texts that are no reply below
    samples = {s.answer: s for s in real.load_rows(data.root, "mmstar", [
        real.mmstar_row(letter, plain, index=i) for i, letter in enumerate(LETTERS)])}
    for reply, theirs in [("Cotton", "C"), ("Blue", "B"), ("The answer is Blue", "B"),
                          ("DNA.", "A"), ("CA", "A")]:
        assert harness.mcq.extract_mcq_answer(reply, list(LETTERS)) == theirs
        assert mmstar_score(harness, reply, samples[theirs]) == 1.0
        assert judge(reply, samples[theirs]) == Verdict(0.0, "")


def mmstar_score(harness, reply: str, sample) -> float:
    doc = {"answer": sample.answer, "category": "c", "l2_category": sample.kind, "index": 0}
    return harness.mmstar.mmstar_process_results(doc, [harness_sees(reply)])["average"]["score"]


def test_class_option_text(harness, data):
    """A reply that is exactly one option's text names that option (as VLMEvalKit reads it);
    lmms-eval finds no letter and scores it wrong. Two equal options name none."""
    dark_green = next(s for s in data.mmstar if len(s.choices) == 4 and s.answer == "D")
    assert mmstar_score(harness, "dark green.", dark_green) == 0.0
    assert judge("dark green.", dark_green) == Verdict(1.0, "D")
    (ambiguous,) = real.own_samples(data.root, [{"question": "Which?", "choices": ["red", "Red"],
                                            "answer": "A"}])
    assert judge("red", ambiguous).prediction == ""


def test_class_outside_options(harness, data):
    """A question with fewer than four options: ours reads only its own letters, lmms-eval's
    MMStar and RealWorldQA tasks always read A-D, so a letter the question does not offer can
    win there ("It is A, not C." -> C: the end of the reply outranks "A,")."""
    two = next(s for s in data.mmstar if s.choices == OPTIONS[:2] and s.answer == "A")
    reply = "It is A, not C."
    assert harness.mcq.extract_mcq_answer(reply, list(LETTERS)) == "C"
    assert mmstar_score(harness, reply, two) == 0.0
    assert judge(reply, two) == Verdict(1.0, "A")
    rwqa = next(s for s in data.realworldqa if s.choices == OPTIONS[:3] and s.answer == "B")
    assert harness.realworldqa.realworldqa_process_results(
        {"answer": "B"}, ["It is B, not D."])["exact_match"] == 0.0
    assert judge("It is B, not D.", rwqa) == Verdict(1.0, "B")


def test_class_letter_beyond_d(harness, data):
    """RealWorldQA with five or more options and the answer E..: lmms-eval takes a letter
    beyond D for an open answer (only the reply "e" counts); ours reads it as the letter."""
    (five,) = real.load_rows(data.root, "realworldqa", [real.realworldqa_row("E", ("a", "b", "c", "d",
                                                                         "e"))])
    assert five.choices == ("a", "b", "c", "d", "e")
    for reply, theirs in [("E", 1.0), ("(E)", 0.0), ("The answer is E.", 0.0)]:
        assert harness.realworldqa.realworldqa_process_results(
            {"answer": "E"}, [reply])["exact_match"] == theirs
        assert judge(reply, five) == Verdict(1.0, "E")


def test_mmstar_macro_mean_equals_harness_aggregate(harness, data):
    rng = random.Random(1)
    kinds = ["coarse", "math", "logic", "science"]
    rows = [real.mmstar_row("A", OPTIONS, l2_category=rng.choice(kinds), index=i) for i in range(200)]
    samples = real.load_rows(data.root, "mmstar", rows)
    replies = [rng.choice("AB") for _ in samples]
    verdicts = [judge(r, s) for r, s in zip(replies, samples)]
    theirs = harness.mmstar.mmstar_aggregate_results(
        [harness.mmstar.mmstar_process_results(
            {"answer": s.answer, "category": "c", "l2_category": s.meta["l2_category"],
             "index": i}, [r])["average"] for i, (s, r) in enumerate(zip(samples, replies))])
    summary = summarize(samples, verdicts)
    assert summary["summary"] == "macro"
    assert summary["score"] == pytest.approx(theirs, abs=1e-12)
    assert summary["score"] != pytest.approx(summary["accuracy"], abs=1e-6)  # not plain mean


# ---------------------------------------------------------------- V*

VSTAR_INITIAL = re.compile(r"[A-Da-d][A-Za-z]")


def vstar_class(reply: str) -> str:
    """Which way V*'s own extractor reads a reply that ours reads otherwise: the first
    character of a word (its first pattern has no word boundary), a lower-case letter (it
    upper-cases the reply), else the order of its patterns."""
    seen = harness_sees(reply)
    if VSTAR_INITIAL.match(seen):
        return "vstar-initial"
    if re.search("[abcd]", seen) and not re.search("[ABCD]", seen):
        return "vstar-lower-case"
    return "vstar-order"


def test_vstar_agrees_but_for_the_documented_classes(harness, data):
    """V* is graded by the shared choice rule; lmms-eval's V* task has its own extractor."""
    pairs = differ = 0
    by_class = Counter()
    for sample, reply in itertools.product(data.vstar, letter_replies()):
        doc = {"label": sample.answer, "question_id": 0, "text": sample.question}
        theirs = harness.vstar.vstar_process_results(doc, [harness_sees(reply)])
        theirs = theirs["vstar_overall_acc"]["score"]
        ours = judge(reply, sample)
        steps = choice_steps(harness, reply, sample)
        mcq_verdict = float(steps[0][1] == sample.answer)
        if theirs != mcq_verdict:
            by_class[vstar_class(reply)] += 1
        assert ours.score == attribute(steps, sample.answer, by_class), reply
        pairs += 1
        differ += ours.score != theirs
    check_documented("vstar", pairs, differ, by_class)


def test_class_vstar_extractor(harness, data):
    """lmms-eval's V* extractor reads the first character of any reply starting with A-D
    (also "Answer: B" as A), a lone a-d (the article "a" too), and takes its first matching
    pattern; ours reads as for MMStar. One reply of each class, graded against V*'s task."""
    four = {s.answer: s for s in data.vstar if len(s.choices) == 4}
    cases = [  # reply, V*'s letter, our letter, class
        ("Dark", "D", "", "vstar-initial"), ("Answer: B", "A", "B", "vstar-initial"),
        ("b", "B", "", "vstar-lower-case"), ("(c)", "C", "", "vstar-lower-case"),
        ('"C: a red car"', "A", "C", "vstar-order"),
        ("The answer is A, not B", "A", "B", "vstar-order"), ("I choose A!", None, "A",
                                                               "vstar-order"),
    ]
    for reply, theirs, mine, kind in cases:
        assert harness.vstar.extract_answer_letter(reply) == theirs, reply
        assert vstar_class(reply) == kind
        for gold in {g for g in (theirs, mine) if g}:
            doc = {"label": gold, "question_id": 0, "text": ""}
            verdict = harness.vstar.vstar_process_results(doc, [reply])["vstar_overall_acc"]
            assert judge(reply, four[gold]).prediction == mine, reply
            assert judge(reply, four[gold]).score != verdict["score"], (reply, gold)


# ---------------------------------------------------------------- TextVQA

OCR_WORDS = ["coca-cola", "Coca Cola", "COCA-COLA.", "3.5", "3,000", "3000", "dont", "don't",
             "The Beatles", "beatles", "a", "two", "2", "it's", "its", "Mr. Smith", "U.S.A.",
             "10:30", "$5", "#1", "e-mail", "email", "(555) 123-4567", "hello world!", "yes",
             "no", "one way", "1 way", "STOP", "stop sign", "youre", "whats up", "i'm", "im",
             "a/b", "x_y", "<tag>", "ten", "none", "an apple", "@home", "50%", "5.", "5 .",
             "ohio's", "somebodyd", "somebody'd", "couldnt've", "y'alld've", "twas", "it.s",
             "1.5.2", "{a}", "[b]", "c=d", "e+f", "back\\slash", "`tick`", "new\nline", "tab\tx"]


def vqa_replies() -> list[str]:
    rng = random.Random(2)
    replies = [w for word in OCR_WORDS for w in (word, word.upper(), f"{word}.", f" {word} ")]
    replies += [" ".join(rng.sample(OCR_WORDS, rng.randint(2, 3))) for _ in range(400)]
    return list(dict.fromkeys(replies))


def test_vqa_normalisation_equals_evalai_processor(harness):
    processor = harness.vqa.EvalAIAnswerProcessor()
    for reply in vqa_replies():
        assert normalize_answer(reply) == processor(reply), reply


def test_textvqa_agrees_on_every_reply(harness, data):
    rng = random.Random(3)
    replies = vqa_replies()
    pool = OCR_WORDS + [w.upper() for w in OCR_WORDS]
    answer_sets = [[reply if rng.random() < 0.3 else rng.choice(pool) for _ in range(10)]
                   for reply in replies]
    samples = real.load_rows(data.root, "textvqa", [real.textvqa_row(a, i)
                                               for i, a in enumerate(answer_sets)])
    differ = fractional = 0
    for reply, sample, answers in zip(replies, samples, answer_sets):
        assert sample.answers == tuple(answers)
        doc = {"answers": list(answers), "question_id": 0}
        theirs = harness.textvqa.textvqa_process_results(doc, [harness_sees(reply)])
        differ += judge(reply, sample).score != theirs["exact_match"]
        fractional += 0 < theirs["exact_match"] < 1
    assert fractional >= 50
    check_documented("textvqa", len(replies), differ, Counter())


# ---------------------------------------------------------------- CountBench

def count_replies() -> list[str]:
    cores = [str(n) for n in range(0, 25)] + [
        "zero", "one", "Two", "THREE", "eleven", "twenty", "twenty-one", "none", "3 apples",
        "There are 3.", "3.0", "03", "three dogs", "", "a few", "IV", "3,", "3!"]
    return list(dict.fromkeys(w for core in cores
                              for w in wrapped(core) + [f"{core}..", f"{core} ."]))


def test_countbench_agrees_but_for_the_documented_classes(harness, data):
    samples = real.load_rows(data.root, "countbench", [real.countbench_row(n) for n in (0, 3, 11, 20)])
    def theirs(sample, reply: str, undo: bool = False) -> float:
        seen = harness_sees(reply)
        seen = seen.lower().rstrip(".") if undo else seen  # undone: trailing periods dropped
        doc = {"number": int(sample.answer)}
        return harness.countbench.countbench_process_results(doc, [seen])["acc"]

    agree_but_for("countbench", "count-period", itertools.product(samples, count_replies()),
                  theirs)


def test_class_count_period(harness, data):
    (three,) = real.load_rows(data.root, "countbench", [real.countbench_row(3)])
    for reply in ["3.", "Three.", "3 ."]:
        assert harness.countbench.countbench_process_results({"number": 3}, [reply])["acc"] == 0
        assert judge(reply, three) == Verdict(1.0, "3")


# ---------------------------------------------------------------- POPE

def pope_replies() -> list[str]:
    cores = ["yes", "no", "Yes", "No", "YES", "NO", "Yes, there is a dog in the image.",
             "No, there is no dog.", "There is no dog.", "not really", "Nope", "Yes.", "No.",
             "yes, but not clearly", "I do not see one", "I don't see one", "Maybe",
             "There is a dog. No cat.", "no, no", "", "Yes there is", "Not sure"]
    sentences = [f"{lead}there {verb} {det} {thing} in the image{end}"
                 for lead in ("", "Yes, ", "No, ", "yes ", "no ")
                 for verb in ("is", "is not", "isn't")
                 for det in ("a", "no", "not a")
                 for thing in ("dog", "cat", "Not-so-small car")
                 for end in (".", "", ". No.")]
    spellings = ["".join(c) for word in ("yes", "no")  # every capitalisation, in whitespace
                 for c in itertools.product(*[(x, x.upper()) for x in word])]
    spaces = ["", " ", "\n", "\t", "  "]
    exact = [f"{a}{word}{b}" for word in spellings for a in spaces for b in spaces]
    return list(dict.fromkeys([w for core in cores for w in wrapped(core)] + sentences + exact))


def pope_samples(root, labels, split="random") -> list:
    return real.load_rows(root, "pope", [real.pope_row(label, split, i) for i, label in enumerate(labels)])


def test_pope_agrees_but_for_the_documented_classes(harness, data):
    pairs = differ = 0
    by_class = Counter()
    for sample, reply in itertools.product(pope_samples(data.root, ["yes", "no"]),
                                           pope_replies()):
        doc = {"answer": sample.answer, "question_id": 0}
        theirs = harness.pope.pope_process_results(doc, [harness_sees(reply)])["pope_accuracy"]
        ours = judge(reply, sample)
        if theirs["prediction"] in {"yes", "no"}:
            assert (ours.prediction, ours.score) == (theirs["prediction"], theirs["score"])
        else:  # read by LLaVA's rule; lmms-eval scores it wrong under either label
            assert theirs["score"] == 0.0 and ours.prediction in {"yes", "no"}
            by_class["pope-not-yes-no"] += ours.score != theirs["score"]
        pairs += 1
        differ += ours.score != theirs["score"]
    check_documented("pope", pairs, differ, by_class)


def test_class_pope_not_yes_no(harness, data):
    """lmms-eval counts only a reply that is exactly yes or no (after strip and lower-case);
    ours reads every reply by LLaVA's rule (the first sentence says no if it has the word no
    or not, ignoring case)."""
    yes, no = pope_samples(data.root, ["yes", "no"])
    cases = {"Yes, there is a dog in the image.": (yes, "yes"), "No.": (no, "no"),
             "There is no dog.": (no, "no"), "Not sure": (no, "no"), "Yes.": (yes, "yes"),
             "There is a dog. No cat.": (yes, "yes"), "I don't see one": (yes, "yes"),
             "Nope": (yes, "yes"), "": (yes, "yes")}
    for reply, (sample, said) in cases.items():
        theirs = harness.pope.pope_process_results(
            {"answer": sample.answer, "question_id": 0}, [harness_sees(reply)])
        assert theirs["pope_accuracy"]["score"] == 0.0, reply
        assert judge(reply, sample) == Verdict(1.0, said), reply
    # such replies drop out of lmms-eval's precision and recall altogether
    results = [{"prediction": "yes.", "ground_truth": "yes"},
               {"prediction": "yes", "ground_truth": "yes"},
               {"prediction": "no", "ground_truth": "yes"}]
    assert harness.pope.pope_aggregate_recall(results) == 0.5  # ours: 2 of 3


def test_pope_metrics_equal_a_hand_confusion_matrix(harness, data):
    # 4 TP, 2 FN, 1 FP, 3 TN
    gold = ["yes"] * 6 + ["no"] * 4
    said = ["yes"] * 4 + ["no"] * 2 + ["yes"] + ["no"] * 3
    samples = pope_samples(data.root, gold)
    verdicts = [judge(s, sample) for s, sample in zip(said, samples)]
    summary = summarize(samples, verdicts)
    precision, recall = 4 / 5, 4 / 6
    assert summary["per_kind"]["random"] == pytest.approx(
        {"accuracy": 7 / 10, "precision": precision, "recall": recall,
         "f1": 2 * precision * recall / (precision + recall), "yes_share": 5 / 10, "n": 10})
    assert summary["score"] == pytest.approx(summary["per_kind"]["random"]["f1"])
    results = [{"prediction": s, "ground_truth": g} for s, g in zip(said, gold)]
    assert precision == pytest.approx(harness.pope.pope_aggregate_precision(results))
    assert recall == pytest.approx(harness.pope.pope_aggregate_recall(results))
    assert summary["per_kind"]["random"]["f1"] == pytest.approx(
        harness.pope.pope_aggregate_f1_score(results))


def test_class_pope_yes_share(harness, data):
    """The yes share counts predicted yes; lmms-eval's pope_yes_ratio counts the labels."""
    gold = ["yes", "no"] * 5
    said = ["yes"] * 10  # a model that always says yes
    samples = pope_samples(data.root, gold)
    summary = summarize(samples, [judge(s, x) for s, x in zip(said, samples)])
    results = [{"prediction": s, "ground_truth": g} for s, g in zip(said, gold)]
    assert harness.pope.pope_aggregate_yes_ratio(results) == 0.5
    assert summary["yes_share"] == 1.0


def test_class_pope_headline(harness, data):
    """The headline is the mean of the three splits' F1 (as LLaVA-1.5 reports POPE); lmms-eval's
    pope task reports F1 over all 9,000 questions at once."""
    splits = {"random": (["yes", "no"] * 2, ["yes", "no", "yes", "no"]),
              "adversarial": (["yes", "no"] * 2, ["yes", "yes", "yes", "yes"]),
              "popular": (["yes", "no"] * 2, ["no", "no", "yes", "no"])}
    samples, verdicts, results = [], [], []
    for split, (gold, said) in splits.items():
        these = pope_samples(data.root, gold, split)
        samples += these
        verdicts += [judge(s, x) for s, x in zip(said, these)]
        results += [{"prediction": s, "ground_truth": g} for s, g in zip(said, gold)]
    summary = summarize(samples, verdicts)
    per_split = [summary["per_kind"][s]["f1"] for s in splits]
    assert summary["score"] == pytest.approx(sum(per_split) / 3)
    assert summary["f1"] == pytest.approx(harness.pope.pope_aggregate_f1_score(results))
    assert summary["score"] != pytest.approx(summary["f1"], abs=1e-3)


# ---------------------------------------------------------------- GQA

GQA_GOLDS = ["yes", "no", "left", "red", "t-shirt", "wood", "man's", "table", "2"]


def gqa_replies() -> list[str]:
    cores = ["yes", "No", "left", "Left.", "to the left", "the left", "red", "Red!", "red car",
             "red-car", "T-shirt", "tshirt", "t shirt", "wooden", "Wood", "man's", "mans",
             "on the table", "ON TABLE", "2", "two", "", "it's blue", "its blue"]
    rng = random.Random(4)
    marks = list(string.punctuation) + [" ", "  ", "\n"]
    noisy = []
    for _ in range(600):
        core = list(rng.choice(cores).upper() if rng.random() < 0.3 else rng.choice(cores))
        for _ in range(rng.randint(0, 3)):
            core.insert(rng.randint(0, len(core)), rng.choice(marks))
        noisy.append("".join(core))
    return list(dict.fromkeys(
        [w for core in cores for w in wrapped(core) + [f"{core} .", f"\t{core}"]] + noisy))


def gqa_theirs(harness, reply: str, gold: str) -> float:
    """lmms-eval's GQA task on a reply: no process_results of its own, so the reply stripped
    (:func:`harness_sees`) goes to its metric, exact_match with ignore_case and
    ignore_punctuation (gqa.yaml), against the answer."""
    return float(harness.metrics.exact_match_hf_evaluate(
        predictions=[harness_sees(reply)], references=[gold], ignore_case=True,
        ignore_punctuation=True)["exact_match"])


def test_gqa_agrees_but_for_the_documented_classes(harness, data):
    no_punctuation = str.maketrans("", "", string.punctuation)

    def theirs(sample, reply: str, undo: bool = False) -> float:
        # undone: the whitespace left where punctuation was deleted is stripped too
        seen = harness_sees(reply).translate(no_punctuation) if undo else reply
        return gqa_theirs(harness, seen, sample.answer)

    agree_but_for("gqa", "gqa-space-after-punctuation",
                  itertools.product(real.gqa_samples(data.root, GQA_GOLDS), gqa_replies()), theirs)


def test_class_gqa_space_after_punctuation(harness, data):
    """lmms-eval strips the reply, then deletes punctuation: a space next to a mark stays
    ("yes ." -> "yes "); ours deletes punctuation, then strips. Plain surrounding whitespace
    is stripped by both."""
    (yes,) = real.gqa_samples(data.root, ["yes"])
    for reply in ["yes .", "( yes )", "- yes", "Yes !"]:
        assert gqa_theirs(harness, reply, "yes") == 0.0
        assert judge(reply, yes) == Verdict(1.0, "yes")
    assert gqa_theirs(harness, " Yes.\n", "yes") == judge(" Yes.\n", yes).score == 1.0


# ---------------------------------------------------------------- RefCOCO

def refcoco_theirs(harness, reply: str, sample) -> tuple[float, list]:
    """lmms-eval's refcoco_grounding task: ACC@0.5 of the box its process_result keeps, and
    every box it read from the reply."""
    doc = {"bbox": list(sample.meta["bbox"]), "image": sample.image, "answer": sample.question,
           "question_id": sample.meta["question_id"]}
    kept = harness.refcoco.refcoco_grounding_process_result(doc, [harness_sees(reply)])
    kept = kept["refcoco_grounding_ACC@0.5"]
    return float(harness.refcoco._compute_accuracy(kept["bbox"], kept["pred"], 0.5)), \
        kept["pred_boxes"]


def box_replies(rng: random.Random, target) -> list[str]:
    """Boxes near, on and far from ``target`` (x0, y0, x1, y1) in the ways a model writes
    them: Qwen's JSON (fenced or not, cut short), a bare list, several boxes, boxes running
    off the image, unbracketed numbers, 0..1000 coordinates, prose."""
    def near(spread: float) -> list[int]:
        return [round(v + rng.uniform(-spread, spread)) for v in target]

    replies = []
    for _ in range(120):
        box = near(rng.choice([2, 10, 30, 80]))
        other = near(80)
        off = [box[0] - 60, box[1] - 40, box[2] + 60, box[3] + 40]
        thousand = [round(box[0] * 5), round(box[1] * 10), round(box[2] * 5), round(box[3] * 10)]
        replies += [
            f'[{{"bbox_2d": {box}, "label": "the dog"}}]',
            f'```json\n[\n  {{"bbox_2d": {box}, "label": "the dog"}}\n]\n```',
            f'```json\n[{{"bbox_2d": {box}, "label": "the d', f"{box}",
            f'[{{"bbox_2d": {other}}}, {{"bbox_2d": {box}}}]', f'[{{"bbox_2d": {off}}}]',
            " ".join(str(v) for v in box), f"({', '.join(str(v) for v in box)})",
            f'[{{"bbox_2d": {thousand}}}]', "I cannot find it.",
        ]
    return list(dict.fromkeys(replies))


def first_box_clipped(boxes: list, size: tuple[int, int]) -> list | None:
    if not boxes:
        return None
    x0, y0, x1, y1 = boxes[0]
    width, height = size
    return [min(max(x0, 0), width), min(max(y0, 0), height),
            min(max(x1, 0), width), min(max(y1, 0), height)]


def test_refcoco_agrees_but_for_the_documented_classes(harness, data):
    """Ours with the model answering in original-image pixels (the frame's identity) against
    lmms-eval's refcoco_grounding task."""
    rng = random.Random(5)
    samples = real.load_rows(data.root, "refcoco", [real.refcoco_row([50, 20, 100, 40], (200, 100), 0),
                                               real.refcoco_row([0, 10, 60, 80], (200, 100), 1)])
    pairs = differ = 0
    by_class = Counter()
    for sample in samples:
        x, y, w, h = sample.meta["bbox"]
        target = [x, y, x + w, y + h]
        for reply in box_replies(rng, target):
            theirs, boxes = refcoco_theirs(harness, reply, sample)
            ours = judge(reply, sample)
            # undone in turn: only the first box, as given; clipped to the image; brackets
            first = harness.refcoco._compute_iou(boxes[0], target) >= 0.5 if boxes else False
            clipped = first_box_clipped(boxes, sample.image.size)
            clipped = clipped is not None and harness.refcoco._compute_iou(clipped, target) >= .5
            bracketed = clipped if re.search(r"\[\s*-?\d", reply) else False
            steps = [("harness", theirs), ("box-best-candidate", float(first)),
                     ("box-clipped", float(clipped)), ("box-no-brackets", float(bracketed))]
            for (_, before), (name, after) in zip(steps, steps[1:]):
                by_class[name] += before != after
            assert ours.score == steps[-1][1], reply
            pairs += 1
            differ += ours.score != theirs
    check_documented("refcoco", pairs, differ, by_class)


def test_class_box_best_candidate(harness, data):
    """lmms-eval reads every box of a reply, each as given and as 0..1000, and keeps the one
    that best overlaps the target (the answer picks the box); ours reads the first box in the
    model's own coordinates."""
    (sample,) = real.load_rows(data.root, "refcoco", [real.refcoco_row([50, 20, 100, 40], (200, 100))])
    two = '[{"bbox_2d": [0, 0, 10, 10]}, {"bbox_2d": [50, 20, 150, 60]}]'
    scaled = '[{"bbox_2d": [250, 200, 750, 600]}]'  # (50, 20, 150, 60) as 0..1000
    for reply in (two, scaled):
        assert refcoco_theirs(harness, reply, sample)[0] == 1.0
        assert judge(reply, sample).score == 0.0
    qwen2 = BoxFrame((1000, 1000), (200, 100))  # a Qwen2-VL model answers in 0..1000
    assert judge(scaled, sample, qwen2).score == 1.0


def test_class_box_resized_input(harness, data):
    """Qwen2.5-VL answers in pixels of its resized input: ours maps them to the image (the
    frame); lmms-eval reads them as image pixels (or 0..1000) and misses."""
    (sample,) = real.load_rows(data.root, "refcoco", [real.refcoco_row([320, 240, 640, 480], (1280, 960))])
    frame = BoxFrame((640, 480), (1280, 960))  # the model saw the image at half size
    reply = '[{"bbox_2d": [160, 120, 480, 360]}]'
    assert refcoco_theirs(harness, reply, sample)[0] == 0.0
    assert judge(reply, sample, frame).score == 1.0


def test_class_box_clipped(harness, data):
    """Ours clips the box to the image before the overlap; lmms-eval does not."""
    (sample,) = real.load_rows(data.root, "refcoco", [real.refcoco_row([0, 0, 60, 100], (200, 100))])
    reply = "[-60, -40, 60, 140]"
    assert refcoco_theirs(harness, reply, sample)[0] == 0.0
    assert judge(reply, sample) == Verdict(1.0, "[0.0, 0.0, 60.0, 100.0]", iou=1.0)


def test_class_box_no_brackets(harness, data):
    """lmms-eval also reads four numbers without brackets ("50 20 150 60"); ours needs a box
    in brackets (JSON or a list), so numbers in prose are no box."""
    (sample,) = real.load_rows(data.root, "refcoco", [real.refcoco_row([50, 20, 100, 40], (200, 100))])
    for reply in ["50 20 150 60", "(50, 20, 150, 60)"]:
        assert refcoco_theirs(harness, reply, sample)[0] == 1.0
        assert judge(reply, sample) == Verdict(0.0, "", iou=0.0)
