"""analyses.scoring against the reference harness, lmms-eval 0.7.3: its scoring modules are
loaded by file path from the release wheel (``make test`` downloads it into .cache/wheels;
FUSIONLENS_LMMS_EVAL_WHEEL points elsewhere) with tiny stand-ins for the few heavy imports, and
both grade the same systematically generated replies. Every intended deviation is excluded from
the agreement by an explicit predicate, and on the excluded replies ours must equal the
harness's verdict on the reply with the deviation undone (e.g. lmms-eval's reading of "3."
with the period removed), so no reply goes unchecked.

Run with ``-s`` to see the counts (README: agreement table)."""

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
from pathlib import Path
from types import SimpleNamespace

import pytest

from analyses.scoring import judge, summarize
from analyses.scoring.base import Verdict
from analyses.scoring.vqa import normalize_answer

WHEEL_NAME = "lmms_eval-0.7.3-py3-none-any.whl"
ROOT = Path(__file__).resolve().parents[1]
LETTERS = "ABCD"
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
    "metrics": "lmms_eval/api/metrics.py",
}


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
        for member in TASK_FILES.values():
            archive.extract(member, root)
    stand_ins = _stand_ins(root)
    names = set(stand_ins) | {m.removesuffix(".py").replace("/", ".") for m in TASK_FILES.values()}
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    sys.modules.update(stand_ins)
    loaded = {}
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


def _in_word(reply: str, letters: str) -> bool:
    return re.search(rf"(?<=[A-Za-z])[{letters}]|[{letters}](?=[A-Za-z])", reply) is not None


def _hide_in_word(reply: str, letters: str) -> str:
    """The reply with each choice letter that touches a letter lower-cased: the deviation
    undone, so that lmms-eval's extractor sees only standalone letters."""
    return re.sub(rf"(?<=[A-Za-z])[{letters}]|[{letters}](?=[A-Za-z])",
                  lambda m: m.group().lower(), reply)


def _option_text(reply: str) -> str:
    said = reply.strip()
    for character in ",.!?;:'\"":
        said = said.strip(character)
    hits = [i for i, text in enumerate(OPTIONS) if said.strip().lower() == text.lower()]
    return LETTERS[hits[0]] if len(hits) == 1 else ""


def choice_sample(answer: str, scorer: str = "choice") -> SimpleNamespace:
    return SimpleNamespace(answer=answer, choices=OPTIONS, scorer=scorer, kind="k",
                           dataset="test")


# ---------------------------------------------------------------- multiple choice

def test_choice_extraction_agrees_with_mcq_extract(harness):
    agree = deviations = 0
    for reply in letter_replies():
        ours = judge(reply, choice_sample("A")).prediction
        theirs = harness.mcq.extract_mcq_answer(reply, list(LETTERS))
        undone = harness.mcq.extract_mcq_answer(_hide_in_word(reply, LETTERS), list(LETTERS))
        option = _option_text(reply)
        if not _in_word(reply, LETTERS) and not (theirs == "" and option):
            assert ours == theirs, reply
            agree += 1
        else:  # a letter inside a word, or a reply that is an option's text
            assert ours == (undone or option), reply
            deviations += 1
    print(f"\nchoice: {agree + deviations} replies, {agree} outside the deviations all agree, "
          f"{deviations} deviations")
    assert agree >= 500 and deviations >= 50


def test_letter_inside_a_word_is_no_answer(harness):
    for reply, theirs in [("Cotton", "C"), ("Blue", "B"), ("The answer is Blue", "B"),
                          ("DNA.", "A")]:
        assert harness.mcq.extract_mcq_answer(reply, list(LETTERS)) == theirs
        plain = SimpleNamespace(answer=theirs, choices=("x", "y", "z", "w"), scorer="choice")
        assert judge(reply, plain).prediction == "" and judge(reply, plain).score == 0.0


def test_option_text_names_its_option(harness):
    assert harness.mcq.extract_mcq_answer("dark green.", list(LETTERS)) == ""
    assert judge("dark green.", choice_sample("D")).score == 1.0
    ambiguous = SimpleNamespace(answer="A", choices=("red", "Red"), scorer="choice")
    assert judge("red", ambiguous).prediction == ""


def test_mmstar_agrees(harness):
    agree = total = 0
    for gold, reply in itertools.product(LETTERS, letter_replies()[::2]):
        doc = {"answer": gold, "category": "c", "l2_category": "l2", "index": 0}
        theirs = harness.mmstar.mmstar_process_results(doc, [reply])["average"]["score"]
        ours = judge(reply, choice_sample(gold)).score
        total += 1
        if not _in_word(reply, LETTERS) and not _option_text(reply):
            assert ours == theirs, (gold, reply)
            agree += 1
    print(f"\nmmstar: {total} (gold, reply) pairs, {agree} outside the deviations all agree")
    assert agree >= 500


def test_mmstar_macro_mean_equals_harness_aggregate(harness):
    rng = random.Random(1)
    kinds = ["coarse", "math", "logic", "science"]
    samples = [SimpleNamespace(kind=rng.choice(kinds), scorer="choice", dataset="mmstar")
               for _ in range(200)]
    verdicts = [Verdict(float(rng.random() < 0.4), "A") for _ in samples]
    theirs = harness.mmstar.mmstar_aggregate_results(
        [{"score": v.score, "l2_category": s.kind} for s, v in zip(samples, verdicts)])
    summary = summarize(samples, verdicts)
    assert summary["summary"] == "macro"
    assert summary["score"] == pytest.approx(theirs, abs=1e-12)
    assert summary["score"] != pytest.approx(summary["accuracy"], abs=1e-6)  # not plain mean


def rwqa_replies() -> list[str]:
    cores = ["0", "1", "2", "zero", "Downhill", "downhill", "Uphill", "left", "Left side",
             "yes", "No", "2 cars", "0.5", "3.0", "..."]
    return list(dict.fromkeys(letter_replies()[::3] + [w for c in cores for w in wrapped(c)]))


def test_realworldqa_agrees(harness):
    agree = total = 0
    golds = ["A", "B", "C", "D", "0", "2", "Downhill", "left", "yes"]
    for gold, reply in itertools.product(golds, rwqa_replies()):
        theirs = harness.realworldqa.realworldqa_process_results({"answer": gold}, [reply])
        ours = judge(reply, SimpleNamespace(answer=gold, scorer="realworldqa")).score
        total += 1
        if gold in LETTERS and _in_word(reply, LETTERS):
            continue
        assert ours == theirs["exact_match"], (gold, reply)
        agree += 1
    print(f"\nrealworldqa: {total} (gold, reply) pairs, {agree} outside the deviations agree")
    assert agree >= 500


def test_vstar_extractor_bug_is_not_ours(harness):
    """lmms-eval's V* task reads any reply starting with A-D as that letter; ours does not."""
    vstar = harness.vstar.extract_answer_letter
    sample = SimpleNamespace(answer="B", choices=("red", "white", "black", "yellow"),
                             scorer="choice")
    for reply in ["Blue", "Black and white", "Dark", "Because it is red", "a dog"]:
        assert vstar(reply) in {"A", "B", "C", "D"}
        assert judge(reply, sample).prediction == ""
    same = sum(vstar(r) == (judge(r, sample).prediction or None) for r in letter_replies())
    print(f"\nvstar: ours equals lmms-eval's V* extractor on {same} of "
          f"{len(letter_replies())} replies")


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
    replies = vqa_replies()
    for reply in replies:
        assert normalize_answer(reply) == processor(reply), reply
    print(f"\nvqa normalisation: {len(replies)} strings, all equal")


def test_textvqa_accuracy_agrees(harness):
    rng = random.Random(3)
    replies = vqa_replies()
    pool = OCR_WORDS + [w.upper() for w in OCR_WORDS]
    fractional = 0
    for reply in replies:
        answers = [reply if rng.random() < 0.3 else rng.choice(pool) for _ in range(10)]
        doc = {"answers": list(answers), "question_id": 0}
        theirs = harness.textvqa.textvqa_process_results(doc, [reply])["exact_match"]
        ours = judge(reply, SimpleNamespace(answer=answers[0], answers=tuple(answers),
                                            scorer="vqa"))
        assert ours.score == theirs, (reply, answers)
        fractional += 0 < theirs < 1
    print(f"\ntextvqa: {len(replies)} replies, all agree ({fractional} with partial credit)")
    assert len(replies) >= 500 and fractional >= 50


# ---------------------------------------------------------------- CountBench

def count_replies() -> list[str]:
    cores = [str(n) for n in range(0, 25)] + [
        "zero", "one", "Two", "THREE", "eleven", "twenty", "twenty-one", "none", "3 apples",
        "There are 3.", "3.0", "03", "three dogs", "", "a few", "IV", "3,", "3!"]
    return list(dict.fromkeys(w for core in cores
                              for w in wrapped(core) + [f"{core}..", f"{core} ."]))


def test_countbench_agrees(harness):
    agree = deviations = 0
    for number, reply in itertools.product([0, 3, 11, 20], count_replies()):
        doc = {"number": number}
        ours = judge(reply, SimpleNamespace(answer=str(number), scorer="count")).score
        if reply.strip().lower().endswith("."):  # deviation: trailing periods are dropped
            undone = reply.strip().lower().rstrip(".")
            assert ours == harness.countbench.countbench_process_results(doc, [undone])["acc"]
            deviations += 1
        else:
            assert ours == harness.countbench.countbench_process_results(doc, [reply])["acc"]
            agree += 1
    print(f"\ncountbench: {agree + deviations} (number, reply) pairs, {agree} outside the "
          f"deviation all agree, {deviations} with a trailing period")
    assert agree >= 500


def test_countbench_trailing_period_counts(harness):
    assert harness.countbench.countbench_process_results({"number": 3}, ["3."])["acc"] == 0.0
    assert judge("3.", SimpleNamespace(answer="3", scorer="count")).score == 1.0
    assert judge("Three.", SimpleNamespace(answer="3", scorer="count")).score == 1.0


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
    return list(dict.fromkeys([w for core in cores for w in wrapped(core)] + sentences))


def exact_yes_no() -> list[str]:
    """Every capitalisation of yes and no inside assorted whitespace."""
    spellings = ["".join(c) for word in ("yes", "no")
                 for c in itertools.product(*[(x, x.upper()) for x in word])]
    spaces = ["", " ", "\n", "\t", "  "]
    return [f"{a}{word}{b}" for word in spellings for a in spaces for b in spaces]


def test_pope_agrees_where_lmms_eval_reads_yes_or_no(harness):
    agree = deviations = 0
    replies = list(dict.fromkeys(pope_replies() + exact_yes_no()))
    for gold, reply in itertools.product(["yes", "no"], replies):
        doc = {"answer": gold, "question_id": 0}
        theirs = harness.pope.pope_process_results(doc, [reply])["pope_accuracy"]
        ours = judge(reply, SimpleNamespace(answer=gold, scorer="pope"))
        if theirs["prediction"] in {"yes", "no"}:
            assert (ours.prediction, ours.score) == (theirs["prediction"], theirs["score"])
            agree += 1
        else:  # deviation: lmms-eval scores every other reply wrong; ours reads it
            assert theirs["score"] == 0.0 and ours.prediction in {"yes", "no"}
            deviations += 1
    print(f"\npope: {agree + deviations} (label, reply) pairs, {agree} read yes/no by lmms-eval "
          f"all agree, {deviations} deviations")
    assert agree >= 500


def test_pope_reads_every_reply_by_llavas_rule():
    cases = {"Yes, there is a dog in the image.": "yes", "No, there is no dog.": "no",
             "There is no dog.": "no", "There is a dog. No cat.": "yes", "Not sure": "no",
             "NO": "no", "I don't see one": "yes", "Nope": "yes", "": "yes"}
    for reply, said in cases.items():
        assert judge(reply, SimpleNamespace(answer="yes", scorer="pope")).prediction == said


def pope_samples(labels, split="random"):
    return [SimpleNamespace(answer=label, kind=split, scorer="pope", dataset="pope")
            for label in labels]


def test_pope_metrics_equal_a_hand_confusion_matrix(harness):
    # 4 TP, 2 FN, 1 FP, 3 TN
    gold = ["yes"] * 6 + ["no"] * 4
    said = ["yes"] * 4 + ["no"] * 2 + ["yes"] + ["no"] * 3
    samples = pope_samples(gold)
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


def test_pope_yes_share_counts_predictions_not_labels(harness):
    gold = ["yes", "no"] * 5
    said = ["yes"] * 10  # a model that always says yes
    samples = pope_samples(gold)
    summary = summarize(samples, [judge(s, x) for s, x in zip(said, samples)])
    results = [{"prediction": s, "ground_truth": g} for s, g in zip(said, gold)]
    assert harness.pope.pope_aggregate_yes_ratio(results) == 0.5  # lmms-eval: the labels' share
    assert summary["yes_share"] == 1.0


# ---------------------------------------------------------------- GQA

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
    """lmms-eval's GQA metric: exact match ignoring case and punctuation."""
    return harness.metrics.exact_match_hf_evaluate(
        predictions=[reply], references=[gold], ignore_case=True,
        ignore_punctuation=True)["exact_match"]


def test_gqa_agrees(harness):
    agree = deviations = 0
    no_punctuation = str.maketrans("", "", string.punctuation)
    golds = ["yes", "no", "left", "red", "t-shirt", "wood", "man's", "table", "2"]
    for gold, reply in itertools.product(golds, gqa_replies()):
        ours = judge(reply, SimpleNamespace(answer=gold, scorer="gqa")).score
        bare = reply.translate(no_punctuation)
        if bare != bare.strip():  # deviation: surrounding whitespace is ignored
            assert ours == gqa_theirs(harness, bare.strip(), gold), (gold, reply)
            deviations += 1
        else:
            assert ours == gqa_theirs(harness, reply, gold), (gold, reply)
            agree += 1
    print(f"\ngqa: {len(set(gqa_replies()))} replies, {agree + deviations} (answer, reply) "
          f"pairs, {agree} outside the deviation all agree, {deviations} with surrounding "
          "whitespace")
    assert agree >= 500


def test_gqa_ignores_surrounding_whitespace(harness):
    theirs = harness.metrics.exact_match_hf_evaluate(
        predictions=[" yes\n"], references=["yes"], ignore_case=True, ignore_punctuation=True)
    assert theirs["exact_match"] == 0.0
    assert judge(" yes\n", SimpleNamespace(answer="yes", scorer="gqa")).score == 1.0
