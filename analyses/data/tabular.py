"""Rows of parquet, Arrow (``datasets`` ``save_to_disk``), JSON-lines and CSV files as a
:class:`Table`: every column but the image read at once (text is small), each image read from
disk and decoded only when its row is asked for.

Parquet images are read one row group at a time with only the image column (column
projection), so a 5,000-row file asked for 20 rows reads the image bytes of those rows' row
groups and decodes 20 images. An image cell is what the file holds: a struct ``{bytes, path}``
(the ``datasets`` Image feature), raw bytes, or a path relative to the file's folder.

>>> import json, tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "rows.jsonl").write_text(json.dumps({"image": "a.png", "question": "q?"}) + "\\n")
>>> table = read_table(folder / "rows.jsonl")
>>> len(table), table.column("question"), table.raw_image(0)
(1, ['q?'], 'a.png')
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from probes.errors import UserError
from probes.images import open_image

IMAGE = "image"
SUFFIXES = (".jsonl", ".csv", ".parquet", ".arrow")


class Table:
    """``length`` rows: ``columns`` (name -> one Python value per row) and ``raw_image(i)``,
    the undecoded image cell of row i, read on demand. ``base`` is the folder relative image
    paths start from; ``name`` says where the rows came from in error messages."""

    def __init__(
        self,
        columns: dict[str, list[Any]],
        raw_image: Callable[[int], Any] | None,
        length: int,
        base: Path,
        name: str,
    ) -> None:
        self.columns = columns
        self._raw_image = raw_image
        self.length = length
        self.base = base
        self.name = name

    def __len__(self) -> int:
        return self.length

    def has(self, column: str) -> bool:
        return (column == IMAGE and self._raw_image is not None) or column in self.columns

    def column(self, name: str) -> list[Any]:
        return self.columns[name]

    def require(self, *names: str) -> None:
        """UserError naming the first of ``names`` the table lacks."""
        for name in names:
            if not self.has(name):
                present = ", ".join(sorted({*self.columns, *[IMAGE] * self.has(IMAGE)}))
                raise UserError(
                    f"{self.name} has no column {name!r} (it has: {present or 'no columns'})."
                )

    def row(self, index: int) -> dict[str, Any]:
        """Row ``index``'s cells but the image, by column name."""
        return {name: values[index] for name, values in self.columns.items()}

    def where(self, index: int) -> str:
        """Row ``index`` as error messages name it."""
        return f"row {index} of {self.name}"

    def raw_image(self, index: int) -> Any:
        if self._raw_image is None:
            raise UserError(f"{self.name} has no column 'image'.")
        return self._raw_image(index)

    def take(self, indices: Sequence[int]) -> Table:
        """The rows ``indices``, in that order."""
        chosen = list(indices)
        columns = {name: [values[i] for i in chosen] for name, values in self.columns.items()}
        raw = None if self._raw_image is None else (lambda i: self._raw_image(chosen[i]))
        return Table(columns, raw, len(chosen), self.base, self.name)


def concat(tables: Sequence[Table], name: str) -> Table:
    """The rows of ``tables`` one after the other (a column missing from one reads None)."""
    names = sorted({column for table in tables for column in table.columns})
    columns = {n: [v for t in tables for v in t.columns.get(n, [None] * len(t))] for n in names}
    owners = [(table, i) for table in tables for i in range(len(table))]

    def raw(index: int) -> Any:
        table, row = owners[index]
        return table.raw_image(row)

    base = tables[0].base if tables else Path(".")
    return Table(columns, raw, len(owners), base, name)


def decode_image(value: Any, base: Path, where: str) -> Image.Image:
    """An image cell (struct ``{bytes, path}``, bytes, or a path) decoded to RGB."""
    return _read(value, base, where, lambda opened: opened.convert("RGB"))


def image_size(value: Any, base: Path, where: str) -> tuple[int, int]:
    """An image cell's (width, height) from its header, without decoding its pixels."""
    return _read(value, base, where, lambda opened: opened.size)


def _read(value: Any, base: Path, where: str, use):
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(value))
    elif isinstance(value, str) and value:
        source = base / value
        if not source.is_file():
            raise UserError(f"the image {str(source)!r} of {where} does not exist.")
    else:
        raise UserError(f"{where} has no image (an image cell holds a path or bytes, not "
                        f"{type(value).__name__}).")
    return open_image(source, where, use)


def user_path(text: str | Path) -> Path:
    """``text`` as an absolute path, ``~`` expanded (kept as written for an unknown user)."""
    try:
        return Path(text).expanduser().absolute()
    except RuntimeError:  # ~name of no user
        return Path(text).absolute()


def path_exists(text: str | Path) -> bool:
    """Whether ``text`` (``~`` expanded) names an existing file or folder; False for a text
    no file can have (too long, a NUL byte)."""
    try:
        return user_path(text).exists()
    except (OSError, ValueError):
        return False


def read_table(path: Path) -> Table:
    """The rows of one ``.parquet``, ``.arrow``, ``.jsonl`` or ``.csv`` file."""
    readers = {".parquet": read_parquet, ".arrow": read_arrow, ".jsonl": read_jsonl,
               ".csv": read_csv}
    if path.suffix not in readers:
        raise UserError(f"cannot read {path}: use a {', '.join(SUFFIXES)} file.")
    return readers[path.suffix](path)


def read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError subclasses
        raise UserError(f"cannot read the parquet file {path}: {err}.") from err
    names = [name for name in parquet.schema_arrow.names if name != IMAGE]
    columns = {name: values for name, values in parquet.read(columns=names).to_pydict().items()}
    where = []  # (row group, offset inside it) of every row
    for group in range(parquet.metadata.num_row_groups):
        where.extend((group, k) for k in range(parquet.metadata.row_group(group).num_rows))
    cache: dict[int, Any] = {}  # the last row group's image column

    def raw(index: int) -> Any:
        group, offset = where[index]
        if group not in cache:
            cache.clear()
            cache[group] = parquet.read_row_group(group, columns=[IMAGE]).column(0)
        return cache[group][offset].as_py()

    has_image = IMAGE in parquet.schema_arrow.names
    return Table(columns, raw if has_image else None, len(where), path.parent, path.name)


def read_arrow(path: Path) -> Table:
    """An Arrow IPC stream file as ``datasets`` writes it; memory-mapped, so an image's bytes
    are read from disk only when its row is asked for."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError subclasses
        raise UserError(f"cannot read the Arrow file {path}: {err}.") from err
    names = [name for name in table.column_names if name != IMAGE]
    columns = table.select(names).to_pydict()
    images = table.column(IMAGE) if IMAGE in table.column_names else None
    raw = None if images is None else (lambda index: images[index].as_py())
    return Table(columns, raw, table.num_rows, path.parent, path.name)


def _rows_table(rows: list[dict[str, Any]], path: Path) -> Table:
    names = sorted({name for row in rows for name in row})
    # image paths are text: kept as a column too (cheap), read as images on demand
    columns = {name: [row.get(name) for row in rows] for name in names}
    images = [row.get(IMAGE) for row in rows]
    raw = (lambda index: images[index]) if any(IMAGE in row for row in rows) else None
    return Table(columns, raw, len(rows), path.parent, path.name)


def read_text(path: Path) -> str:
    """A text file's content as UTF-8 (a byte-order mark is dropped); UserError naming the
    file and the first byte that is not UTF-8 otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}.") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        other = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(f"{path} is not UTF-8 text{other}: byte 0x{data[err.start]:02x} on line "
                        f"{line} is not UTF-8; save the file as UTF-8.") from err


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; UserError naming the file and where it breaks."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON: {err.msg} at line {err.lineno}, column "
                        f"{err.colno}.") from err


def read_jsonl(path: Path) -> Table:
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"line {number} of {path} is not JSON: {err.msg}.") from err
        if not isinstance(row, dict):
            raise UserError(f"line {number} of {path} is not a JSON object.")
        rows.append(row)
    return _rows_table(rows, path)


def read_csv(path: Path) -> Table:
    """A CSV file with a header row; every row must have the header's number of fields."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        lines = list(reader)
    except csv.Error as err:  # an oversized field, a NUL byte
        raise UserError(f"line {reader.line_num} of {path} is not valid CSV: {err}.") from err
    if not lines:
        return _rows_table([], path)
    header, rows = lines[0], []
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"the header of {path} names the column {repeated[0]!r} twice.")
    for number, cells in enumerate(lines[1:], start=2):  # row 0 is on line 2
        if not cells:  # a blank line
            continue
        if len(cells) != len(header):
            raise UserError(f"row {number - 2} of {path} has {len(cells)} fields, its header "
                            f"{len(header)}; quote fields that hold commas.")
        rows.append(dict(zip(header, cells)))
    return _rows_table(rows, path)
