"""Find input files and stream documents out of them, one at a time.

* A plain-text file (any suffix but ``.jsonl``/``.ndjson``) is cut at blank lines: each paragraph
  is one document (``paragraphs=True``, the default), so one article or book gives many documents
  and both splits. With ``paragraphs=False`` the file is one document. Either way a document
  longer than ``max_doc_chars`` is cut at a blank line (else a newline, else hard) near that size,
  so one huge file or paragraph never has to sit in memory whole.
* A JSON Lines file gives one document per non-blank line, from its ``text_field``.
* No inputs at all means the built-in corpus: the texts of ``pydoc_data.topics`` (shipped with
  every Python), one document per topic, so nothing is downloaded.

Invalid UTF-8 never stops reading: each bad sequence becomes U+FFFD (exactly as Python's
``errors="replace"``), its bytes are counted and the first one's file and byte offset kept.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hwlm.data.config import BUILTIN_CORPUS
from hwlm.data.normalize import normalize
from hwlm.errors import DataError

__all__ = ["Source", "Utf8Stats", "resolve_inputs", "iter_raw_documents", "read_documents", "decode_utf8"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_CHUNK = 1 << 20
_GLOB_CHARS = set("*?[")
# A blank line: a newline, then one or more lines holding only spaces/tabs/CRs. Greedy, so a run of
# blank lines is one separator; the next paragraph's indentation is left to it.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


@dataclass(frozen=True)
class Source:
    """One input: a file path, or the built-in corpus."""

    path: str
    kind: str  # "text" | "jsonl" | "builtin"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input's content cheaply (for resuming safely)."""
        if self.kind == "builtin":
            return {"path": self.path}
        st = os.stat(self.path)
        return {"path": self.path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Utf8Stats:
    """Invalid UTF-8 seen so far: bytes replaced, and where the first one was."""

    count: int = 0
    first_file: str | None = None
    first_offset: int | None = None
    skipped_files: list[str] = field(default_factory=list)

    def record(self, file: str, offset: int, nbytes: int) -> None:
        if self.first_file is None:
            self.first_file, self.first_offset = file, offset
        self.count += nbytes

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``invalid_utf8`` entry."""
        first = None if self.first_file is None else {"file": self.first_file, "offset": self.first_offset}
        return {"count": self.count, "first": first}


def decode_utf8(buf: bytes, base: int, final: bool, stats: Utf8Stats, file: str) -> tuple[str, bytes]:
    """Decode ``buf`` (which starts at byte ``base`` of ``file``); return (text, undecoded tail).

    Unless ``final``, an incomplete sequence at the end is returned as the tail, to be
    prefixed to the next chunk. Scanning goes through a memoryview so a file full of bad
    bytes still decodes in linear time.
    """
    mv = memoryview(buf)
    pos, parts = 0, []
    while True:
        try:
            text, used = codecs.utf_8_decode(mv[pos:], "strict", final)
        except UnicodeDecodeError as exc:
            parts.append(codecs.utf_8_decode(mv[pos:pos + exc.start], "strict", True)[0])
            stats.record(file, base + pos + exc.start, exc.end - exc.start)
            parts.append("\ufffd")
            pos += exc.end
            continue
        parts.append(text)
        pos += used
        return "".join(parts), bytes(mv[pos:])


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def _walk(folder: Path, stats: Utf8Stats) -> list[Path]:
    """Non-hidden files under ``folder``, sorted; files that look binary (NUL bytes) are skipped."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if _is_binary(p):
            stats.skipped_files.append(str(p))
            continue
        found.append(p)
    return found


def resolve_inputs(inputs: list[str], stats: Utf8Stats | None = None) -> list[Source]:
    """Expand files, folders and globs into an ordered, de-duplicated list of sources."""
    stats = stats if stats is not None else Utf8Stats()
    if not inputs:
        return [Source(BUILTIN_CORPUS, "builtin")]
    paths: list[Path] = []
    for item in inputs:
        if item == BUILTIN_CORPUS:
            paths.append(Path(item))
        elif _GLOB_CHARS & set(item) and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"input glob {item!r} matches no files: check the pattern and the current folder")
            for m in map(Path, matches):
                paths.extend(_walk(m, stats) if m.is_dir() else [m] if m.is_file() else [])
        elif Path(item).is_dir():
            files = _walk(Path(item), stats)
            if not files:
                raise DataError(f"input folder {item} holds no readable text files: add .txt/.jsonl files to it")
            paths.extend(files)
        elif Path(item).is_file():
            paths.append(Path(item))
        elif Path(item).exists():
            # A device, pipe or socket: prepare reads each input twice (tokenizer sample, then encoding).
            raise DataError(f"input {item} exists but is not a regular file (a device, pipe or socket): "
                            "save the text to a file first, or give a folder or glob")
        else:
            raise DataError(f"input {item} does not exist: check the path (files, folders and globs are accepted)")
    sources, seen = [], set()
    for p in paths:
        key = str(p) if str(p) == BUILTIN_CORPUS else os.path.realpath(p)
        if key in seen:
            continue
        seen.add(key)
        kind = "builtin" if str(p) == BUILTIN_CORPUS else "jsonl" if p.suffix.lower() in JSONL_SUFFIXES else "text"
        sources.append(Source(str(p), kind))
    return sources


def _cut(buf: str, limit: int) -> tuple[str, str]:
    """Split ``buf`` near ``limit`` characters: at a blank line, else a newline, else hard."""
    idx = buf.rfind("\n\n", 0, limit)
    if idx > 0:
        return buf[:idx], buf[idx + 2:]
    idx = buf.rfind("\n", 0, limit)
    if idx > 0:
        return buf[:idx], buf[idx + 1:]
    return buf[:limit], buf[limit:]


def _paragraphs(buf: str, final: bool) -> tuple[list[str], str]:
    """The complete paragraphs of ``buf`` (non-blank ones) and the unfinished rest.

    Unless ``final``, only separators before the last non-blank character count: one that reaches
    the end of ``buf`` may go on in the next chunk, and cutting there would glue its tail of
    blank lines onto the next paragraph. So the documents do not depend on where chunks end.
    """
    limit = len(buf) if final else len(buf.rstrip())
    docs, start = [], 0
    for m in _BLANK_LINES.finditer(buf, 0, limit):
        if buf[start:m.start()].strip():
            docs.append(buf[start:m.start()])
        start = m.end()
    return docs, buf[start:]


def _iter_text(path: str, max_doc_chars: int, stats: Utf8Stats, paragraphs: bool = True) -> Iterator[str]:
    pending, pending_len, tail, base = [], 0, b"", 0
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                final = not chunk
                text, new_tail = decode_utf8(tail + chunk, base - len(tail), final, stats, path)
                base += len(chunk)
                tail = new_tail
                pending.append(text)
                pending_len += len(text)
                if paragraphs and ("\n" in text or final):
                    docs, rest = _paragraphs("".join(pending), final)
                    for doc in docs:
                        yield from _bounded(doc, max_doc_chars)
                    pending, pending_len = [rest], len(rest)
                while pending_len > max_doc_chars:
                    doc, rest = _cut("".join(pending), max_doc_chars)
                    yield doc
                    pending, pending_len = [rest], len(rest)
                if final:
                    break
    except OSError as exc:
        raise DataError(f"cannot read input {path}: {exc.strerror}") from None
    doc = "".join(pending)
    if doc and (doc.strip() or not paragraphs):
        yield doc


def _bounded(doc: str, max_doc_chars: int) -> Iterator[str]:
    """``doc`` cut into pieces of at most about ``max_doc_chars`` (a paragraph longer than that)."""
    while len(doc) > max_doc_chars:
        piece, doc = _cut(doc, max_doc_chars)
        yield piece
    yield doc


def _iter_jsonl(path: str, text_field: str, stats: Utf8Stats) -> Iterator[str]:
    try:
        with open(path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                line, _ = decode_utf8(raw, offset, True, stats, path)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove that line") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    raise DataError(f"{path}:{lineno}: no {text_field!r} field; set --text-field to the field "
                                    "that holds the text")
                text = obj[text_field]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes
                    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                yield text
    except OSError as exc:
        raise DataError(f"cannot read input {path}: {exc.strerror}") from None


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of a JSON Lines file (labelled data,
    conversations); a line that is not JSON is a DataError naming the file and line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i} is not valid JSON ({exc.msg}); fix or remove that line") from None


def _iter_builtin() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def iter_raw_documents(sources: list[Source], text_field: str, max_doc_chars: int,
                       stats: Utf8Stats, paragraphs: bool = True) -> Iterator[str]:
    """Raw (not yet normalized) documents of all ``sources``, in order (see the module docstring)."""
    for src in sources:
        if src.kind == "builtin":
            yield from _iter_builtin()
        elif src.kind == "jsonl":
            yield from _iter_jsonl(src.path, text_field, stats)
        else:
            yield from _iter_text(src.path, max_doc_chars, stats, paragraphs)


def read_documents(paths: list[str] | list[Path], *, text_field: str = "text", form: str = "nfkc",
                   strip_control: bool = True, max_doc_chars: int = 1_000_000, paragraphs: bool = True,
                   stats: Utf8Stats | None = None) -> Iterator[str]:
    """Normalized, non-empty documents from files, folders or globs (e.g. to evaluate on raw text).

    Pass a :class:`Utf8Stats` to learn how many invalid UTF-8 bytes were replaced, and where.
    """
    stats = stats if stats is not None else Utf8Stats()
    sources = resolve_inputs([str(p) for p in paths], stats)
    for raw in iter_raw_documents(sources, text_field, max_doc_chars, stats, paragraphs):
        doc = normalize(raw, form, strip_control)
        if doc.strip():
            yield doc
