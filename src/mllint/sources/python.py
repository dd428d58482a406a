"""Reading and writing Python files without changing anything but the fixed text.

Decoding follows Python's own rules (a UTF-8 BOM, else a PEP 263 cookie on line 1 or 2, else
UTF-8), and the text keeps its newlines exactly (no universal-newline translation), so offsets
and written bytes match the file. Writing re-encodes with the same encoding and BOM, goes
through a temporary file in the same directory (fsync, then rename) and keeps the file's mode.
A file that changed on disk since it was read is not overwritten.
"""

from __future__ import annotations

import codecs
import io
import os
import stat
import tempfile
import tokenize
from dataclasses import dataclass
from typing import Optional


class SourceError(Exception):
    """The file cannot be turned into text: ``code`` is the mllint code to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    encoding: str
    bom: bool
    raw: bytes  # the bytes as read, to detect a concurrent change before writing


def decode(raw: bytes) -> tuple:
    """(text, encoding, bom) for Python source bytes, or SourceError (MLL903)."""
    bom = raw.startswith(codecs.BOM_UTF8)
    body = raw[len(codecs.BOM_UTF8):] if bom else raw
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError as exc:
        # An unknown encoding, a cookie that contradicts the BOM, or (no cookie) first lines
        # that are not UTF-8: in the last case the UTF-8 decode below says exactly where.
        encoding = "utf-8"
        try:
            body.decode(encoding)
        except UnicodeDecodeError:
            pass
        else:
            raise SourceError("MLL903", f"cannot decode the file: {exc.msg}") from None
    if encoding == "utf-8-sig":
        encoding = "utf-8"
    try:
        text = body.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        detail = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
        where = ""
        if isinstance(exc, UnicodeDecodeError):
            prefix = body[: exc.start]
            line = prefix.count(b"\n") + 1
            where = f" at line {line}, byte {exc.start}"
        raise SourceError("MLL903", f"cannot decode the file as {encoding}{where}: {detail}") from None
    return text, encoding, bom


def read_source(path: str) -> SourceFile:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise SourceError("MLL904", f"cannot read the file: {exc.strerror or exc}") from None
    text, encoding, bom = decode(raw)
    return SourceFile(path, text, encoding, bom, raw)


def encode(source: SourceFile, text: str) -> bytes:
    data = text.encode(source.encoding)
    return codecs.BOM_UTF8 + data if source.bom else data


def write_source(source: SourceFile, text: str) -> None:
    """Atomically replace the file with ``text`` (SourceError MLL904 when it cannot)."""
    try:
        data = encode(source, text)
    except UnicodeEncodeError as exc:
        raise SourceError("MLL904", f"the fixed text cannot be encoded as {source.encoding}: {exc.reason}") from None
    path = source.path
    try:
        with open(path, "rb") as handle:
            current = handle.read()
    except OSError as exc:
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None
    if current != source.raw:
        raise SourceError("MLL904", "the file changed while mllint was running; fixes not written")
    directory = os.path.dirname(os.path.abspath(path))
    real = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
        fd, tmp = tempfile.mkstemp(prefix=".mllint-", suffix=".tmp", dir=os.path.dirname(real) or directory)
    except OSError as exc:
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except OSError as exc:
        _remove_quietly(tmp)
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None


def _remove_quietly(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
