"""Malformed users' files, one case per category of issue #26, each refused in the sentence
shown (or, for a byte-order mark and a comma in a file's name, read as intended)."""

from __future__ import annotations

import json

import pytest
from test_fuzz_data import row_png

from analyses.common import load_data
from probes.errors import UserError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for r in range(2):
        (tmp_path / "img" / f"{r}.png").write_bytes(row_png(r))
    return tmp_path


CSV = "image,question,answer\nimg/0.png,what?,red\nimg/1.png,which?,blue\n"


def refusal(path) -> str:
    with pytest.raises(UserError) as error:
        load_data(str(path), None, None)
    return str(error.value).replace(str(path.parent), "DIR")


@pytest.mark.parametrize("text,expected", [
    (CSV.replace("which?,blue", "which?,blue,extra"),
     "row 1 of DIR/mine.csv has 4 fields, its header 3; quote fields that hold commas."),
    (CSV.replace("what?,red", "what?"),
     "row 0 of DIR/mine.csv has 2 fields, its header 3; quote fields that hold commas."),
    (CSV.replace("what?", "x" * 200_000),
     "line 2 of DIR/mine.csv is not valid CSV: field larger than field limit (131072)."),
    ("image,question,image\n", "the header of DIR/mine.csv names the column 'image' twice."),
    ("image,question,answer\n", "DIR/mine.csv holds no rows (questions)."),
])
def test_malformed_csv_is_one_sentence(folder, text, expected):
    path = folder / "mine.csv"
    path.write_text(text, encoding="utf-8")
    assert refusal(path) == expected


def test_another_encoding_names_the_file_and_the_byte(folder):
    path = folder / "mine.csv"
    path.write_bytes(CSV.replace("what?", "qué?").encode("latin-1"))
    assert refusal(path) == ("DIR/mine.csv is not UTF-8 text: byte 0xe9 on line 2 is not UTF-8; "
                             "save the file as UTF-8.")
    path.write_bytes(CSV.encode("utf-16"))
    assert refusal(path).startswith("DIR/mine.csv is not UTF-8 text (it looks like UTF-16)")


@pytest.mark.parametrize("name", ["mine.csv", "mine.jsonl"])
def test_a_byte_order_mark_changes_nothing(folder, name):
    rows = [{"image": f"img/{r}.png", "question": "what?", "answer": "red"} for r in range(2)]
    text = CSV if name.endswith(".csv") else "".join(json.dumps(r) + "\n" for r in rows)
    (folder / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    (folder / f"plain-{name}").write_bytes(text.encode())

    def seen(path):
        return [(s.question, s.answer, s.image.getpixel((0, 0)))
                for s in load_data(str(path), None, None)]

    assert seen(folder / name) == seen(folder / f"plain-{name}")
    assert len(seen(folder / name)) == 2


def test_more_options_than_letters_is_one_sentence(folder):
    path = folder / "mine.jsonl"
    choices = [f"option {k}" for k in range(27)]
    path.write_text(json.dumps({"image": "img/0.png", "question": "which?", "choices": choices,
                                "answer": "option 26"}) + "\n")
    assert refusal(path) == ("row 0 of mine.jsonl has 27 choices; at most 26 (A to Z) are "
                             "supported.")


def test_a_field_of_another_type_names_the_field(folder):
    path = folder / "mine.jsonl"
    path.write_text(json.dumps({"image": "img/0.png", "question": ["a", "list"],
                                "answer": "x"}) + "\n")
    assert refusal(path) == "the field 'question' of row 0 of mine.jsonl is ['a', 'list'], not text."


def test_a_path_with_a_comma_in_its_name_is_one_dataset_and_still_lists(folder):
    rows = "".join(json.dumps({"image": f"img/{r}.png", "question": "q?", "answer": "a"}) + "\n"
                   for r in range(2))
    (folder / "a,b.jsonl").write_text(rows)
    (folder / "c.jsonl").write_text(rows)
    one = load_data(str(folder / "a,b.jsonl"), None, None)
    assert (one.name, len(one)) == ("a,b.jsonl", 2)
    both = load_data(f"{folder / 'a,b.jsonl'},{folder / 'c.jsonl'}", None, None)
    assert (both.name, len(both)) == ("a,b.jsonl,c.jsonl", 4)
