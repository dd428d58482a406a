"""Reading and writing Python files without changing anything but the fixed text.

Decoding follows Python's own rules (a UTF-8 BOM, else a PEP 263 cookie on line 1 or 2, else
UTF-8), and the text keeps its newlines exactly (no universal-newline translation), so offsets
and written bytes match the file. Writing re-encodes with the same encoding and BOM, goes
through a temporary file in the same directory (fsync, then rename) and keeps the file's mode.
A file that changed on disk since it was read is not overwritten, nor is a read-only one; the
new file gets the old one's owner where allowed. Only regular files are read: a named pipe or a
device is refused without blocking (docs/guarantees.md).
"""

from __future__ import annotations

import codecs
import errno
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
            message = exc.msg
            if bom and message.startswith("encoding problem"):  # CPython's words for this case
                message = "it starts with a UTF-8 byte order mark but its coding cookie names another encoding"
            raise SourceError("MLL903", f"cannot decode the file: {message}") from None
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


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISDIR, "a directory"))


def read_bytes(path: str) -> bytes:
    """The bytes of a regular file; ``OSError`` for anything else. The file is opened without
    blocking, so a named pipe (which would wait for a writer forever) or a device is refused
    instead of read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})")
        return handle.read()


def read_source(path: str) -> SourceFile:
    try:
        raw = read_bytes(path)
    except OSError as exc:
        what = "directory" if os.path.isdir(path) else "file"  # a directory mllint may not list
        raise SourceError("MLL904", f"cannot read the {what}: {exc.strerror or exc}") from None
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
        current = read_bytes(path)
    except FileNotFoundError:
        raise SourceError("MLL904", "the file was deleted while mllint was running; fixes not written") from None
    except OSError as exc:
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None
    if current != source.raw:
        raise SourceError("MLL904", "the file changed while mllint was running; fixes not written")
    directory = os.path.dirname(os.path.abspath(path))
    real = os.path.realpath(path)
    if not os.access(real, os.W_OK):  # a rename would replace it anyway: respect the mode
        raise SourceError("MLL904", "cannot write the fix: the file is read-only")
    try:
        info = os.stat(real)
        mode = stat.S_IMODE(info.st_mode)
        fd, tmp = tempfile.mkstemp(prefix=".mllint-", suffix=".tmp", dir=os.path.dirname(real) or directory)
    except PermissionError:  # the new file is made next to the old one, then renamed over it
        raise SourceError("MLL904", "cannot write the fix: the file's directory is read-only") from None
    except OSError as exc:
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _keep_owner(tmp, info)  # before chmod: chown may clear set-id bits
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except OSError as exc:
        _remove_quietly(tmp)
        raise SourceError("MLL904", f"cannot write the fix: {exc.strerror or exc}") from None


def _keep_owner(tmp: str, info: os.stat_result) -> None:
    """Give the new file the old one's owner and group where allowed (root fixing another
    user's file must not take it over); otherwise the new file is the writer's."""
    if hasattr(os, "chown"):
        current = os.stat(tmp)
        if (current.st_uid, current.st_gid) != (info.st_uid, info.st_gid):
            try:
                os.chown(tmp, info.st_uid, info.st_gid)
            except OSError:
                pass


def _remove_quietly(path: Optional[str]) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
