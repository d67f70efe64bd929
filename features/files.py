"""Reading CSV files as real exports come: any line endings, a BOM, another delimiter or
encoding, quoted fields with line breaks, lines that do not fit the header.

A clean file (UTF-8, one kind of line ending, every line with the header's number of
fields) is read by DuckDB directly, which is fast. Anything else is read once by Python's
``csv`` module (which takes ``\\n``, ``\\r\\n`` and ``\\r`` alike) into a clean UTF-8 copy
in a scratch folder; the lines it cannot split into the header's fields become
:class:`BadLine` s for quarantine, with their line number. What cannot be read at all (bytes
that are not the declared encoding) is a :class:`FileError` naming the file, the line and
the option to give.

Numbers with decimal commas or thousands separators and dates in a declared format are
parsed later, by ingest's SQL, from :class:`FileOptions`.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

import duckdb

#: delimiters tried on the header line when none is given
DELIMITERS = (",", ";", "\t", "|")
#: encodings DuckDB reads itself (others are transcoded by Python)
_UTF8 = ("utf-8", "utf8", "utf-8-sig")


class FileError(ValueError):
    """A file cannot be read with the options given; the message says what to change."""


@dataclass(frozen=True)
class FileOptions:
    """How the CSV files of one ingest are written (the defaults read a plain export).

    ``delimiter`` None is detected from the header line; ``decimal`` and ``thousands``
    apply to number columns (``thousands`` must group digits by three to be accepted);
    ``date_format`` (``strftime`` codes, e.g. ``%d/%m/%Y``) is required when dates are
    written with day and month as numbers in an order ISO 8601 does not fix: such dates
    are never guessed. A format without a time also reads ``HH:MM[:SS]`` after the date;
    ISO 8601 timestamps are read in every case.
    """

    delimiter: str | None = None
    encoding: str = "utf-8"
    decimal: str = "."
    thousands: str | None = None
    date_format: str | None = None

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise FileError(f"delimiter must be one character, got {self.delimiter!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise FileError(
                f"unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)"
            ) from exc
        if self.decimal not in (".", ","):
            raise FileError(f"decimal separator must be '.' or ',', got {self.decimal!r}")
        if self.thousands is not None and (
            self.thousands not in (",", ".", " ", "'") or self.thousands == self.decimal
        ):
            raise FileError(
                f"thousands separator must be one of , . ' or a space and differ from the "
                f"decimal separator, got {self.thousands!r}"
            )
        if self.date_format is not None and "%" not in self.date_format:
            raise FileError(
                f"date format {self.date_format!r} has no % codes (e.g. %d/%m/%Y %H:%M)"
            )

    @property
    def date_formats(self) -> tuple[str, ...]:
        """The declared format, and with times added when it has none (exports often write
        midnight as a bare date and other times in full)."""
        fmt = self.date_format
        if fmt is None:
            return ()
        if "%H" in fmt or "%I" in fmt:
            return (fmt,)
        return (fmt, f"{fmt} %H:%M", f"{fmt} %H:%M:%S")

    @property
    def utf8(self) -> bool:
        return codecs.lookup(self.encoding).name in _UTF8


@dataclass(frozen=True)
class BadLine:
    """A record of the file that does not split into the header's fields."""

    line: int
    fields: tuple[str, ...]
    reason: str


@dataclass
class CsvRead:
    """A CSV file made readable: the DuckDB relation to select from, and its bad lines."""

    relation: str
    bad_lines: list[BadLine] = field(default_factory=list)
    delimiter: str = ","
    #: the file the relation reads: ``path`` itself (split by ``delimiter``), or its clean
    #: copy (comma-separated UTF-8)
    path: Path | None = None


def lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def read_csv(
    db: duckdb.DuckDBPyConnection, path: Path, options: FileOptions, scratch: Path
) -> CsvRead:
    """The relation reading ``path`` as text columns; a clean copy goes to ``scratch`` when
    DuckDB cannot read the file as it is (see the module docstring)."""
    delimiter = options.delimiter or detect_delimiter(path, options.encoding)
    if options.utf8:
        relation = _duckdb_relation(path, delimiter)
        try:
            db.execute(f"SELECT count(*) FROM {relation}").fetchone()
        except duckdb.Error:
            pass  # not clean: the Python reader says exactly where and why
        else:
            return CsvRead(relation, delimiter=delimiter, path=path)
    scratch.mkdir(parents=True, exist_ok=True)
    clean = scratch / f"{len(list(scratch.iterdir()))}-{path.name.removesuffix('.gz')}"
    bad = _rewrite(path, clean, delimiter, options.encoding)
    return CsvRead(_duckdb_relation(clean, ","), bad, delimiter, clean)


def _duckdb_relation(path: Path, delimiter: str) -> str:
    return (
        f"read_csv({lit(str(path))}, header = true, all_varchar = true, "
        f"delim = {lit(delimiter)}, quote = '\"', escape = '\"')"
    )


def detect_delimiter(path: Path, encoding: str) -> str:
    """The candidate that splits the header line into the most fields (``,`` when none does)."""
    with _text(path, encoding) as fh:
        try:
            header = fh.readline()
        except UnicodeDecodeError:
            _raise_decode_error(path, encoding)
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 1 else ","


def _text(path: Path, encoding: str) -> IO[str]:
    """The file as text, line endings kept as they are (``newline=''``, as csv wants)."""
    name = codecs.lookup(encoding).name
    enc = "utf-8-sig" if name in _UTF8 else encoding
    return io.TextIOWrapper(_binary(path), encoding=enc, errors="strict", newline="")


def _binary(path: Path) -> BinaryIO:
    """The file's bytes (gzip-compressed files uncompressed)."""
    if path.name.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _rewrite(source: Path, target: Path, delimiter: str, encoding: str) -> list[BadLine]:
    """Copy ``source`` to a clean UTF-8, comma-separated ``target``; return the bad lines."""
    bad: list[BadLine] = []
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _text(source, encoding) as fh, open(target, "w", encoding="utf-8", newline="") as out:
        reader = csv.reader(fh, delimiter=delimiter)
        writer = csv.writer(out, lineterminator="\n")
        try:
            header = next(reader, None)
            if header is None:
                raise FileError(f"{source}: the file is empty (a header line is needed)")
            writer.writerow(header)
            start = reader.line_num + 1
            for row in reader:
                if row:
                    if len(row) == len(header):
                        writer.writerow(row)
                    else:
                        bad.append(_bad_line(start, row, len(header), reader.line_num))
                start = reader.line_num + 1
        except UnicodeDecodeError:
            _raise_decode_error(source, encoding)
        except csv.Error as exc:
            raise FileError(
                f"{source}: line {reader.line_num}: {exc}; check the quoting of that line"
            ) from exc
    return bad


def _bad_line(start: int, row: list[str], expected: int, end: int) -> BadLine:
    lines = f"line {start}" if end == start else f"lines {start}-{end}"
    hint = (
        "a quote is not closed"
        if end > start and len(row) < expected
        else "check the delimiter and the quoting"
    )
    return BadLine(
        start, tuple(row), f"{lines}: {len(row)} fields where the header has {expected} ({hint})"
    )


def _raise_decode_error(path: Path, encoding: str) -> None:
    line, sample = _first_undecodable(path, encoding)
    raise FileError(
        f"{path}: line {line} is not valid {encoding} (bytes {sample!r}); give the file's "
        "encoding with --encoding (exports from Windows are often cp1252, older ones latin-1)"
    )


def _first_undecodable(path: Path, encoding: str) -> tuple[int, bytes]:
    """(line number, bytes) of the first byte sequence that is not ``encoding``."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line = 1
    with _binary(path) as fh:
        for chunk in _chunks(fh):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                start = max(exc.start, 0)
                return line + chunk[:start].count(b"\n"), bytes(chunk[start : start + 4])
            line += chunk.count(b"\n")
    return line, b""


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(1 << 20):
        yield chunk
