"""How fixed files are written: atomically, keeping encoding, BOM, newlines, the trailing newline,
mode, owner and symlinks, and never at all when nothing is fixed (docs/guarantees.md).

In-process through ``runner.process_file`` (the code path of ``mllint --fix``), so the tests can
watch the write itself (the temporary file, ``fsync``, the rename).
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

import pytest

import mllint.sources.python as python_source
from clihelp import CLEAN_SRC, MLL101_FIXED, MLL101_SRC, MLL302_FIXED, MLL302_SRC, run, write
from mllint import Settings
from mllint.runner import Mode, process_file
from mllint.sources.python import SourceError, read_source, write_source

FIX = Mode(fix=True, unsafe=True)
BOM = codecs.BOM_UTF8


def fix_file(path: Path):
    return process_file(path, Settings(), FIX)


def newlines(text: str, newline: str) -> str:
    return text.replace("\n", newline)


# -- newline style and the trailing newline -----------------------------------------------------

@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("source, fixed", [(MLL101_SRC, MLL101_FIXED), (MLL302_SRC, MLL302_FIXED)],
                         ids=["inserts-lines", "edits-a-line"])
def test_newline_style_is_kept(tmp_path, newline, source, fixed):
    path = tmp_path / "t.py"
    path.write_bytes(newlines(source, newline).encode())
    result = fix_file(path)
    assert result.fixed >= 1 and not result.diagnostics
    assert path.read_bytes() == newlines(fixed, newline).encode()


def test_mixed_newlines_are_left_as_they_are(tmp_path):
    lines = MLL302_SRC.splitlines(keepends=True)
    mixed = lines[0].replace("\n", "\r\n") + lines[1] + lines[2].replace("\n", "\r") + "# end\r\n"
    path = tmp_path / "t.py"
    path.write_bytes(mixed.encode())
    fix_file(path)
    assert path.read_bytes() == mixed.replace("memory_mask=", "memory_key_padding_mask=").encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_a_missing_trailing_newline_stays_missing(tmp_path, newline):
    # The fix inserts a line after the last statement, which has no newline at its end.
    source = MLL101_SRC.splitlines()
    source = source[:3] + [source[4], source[3]]  # the model line last
    text = newline.join(source)
    path = tmp_path / "t.py"
    path.write_bytes(text.encode())
    fix_file(path)
    out = path.read_bytes().decode()
    assert not out.endswith(("\n", "\r"))
    assert out.endswith(newline + "model.resize_token_embeddings(len(tokenizer))")
    assert set(out.split(newline)) >= set(text.split(newline)) - {source[2]}


def test_a_present_trailing_newline_stays(tmp_path):
    path = tmp_path / "t.py"
    path.write_bytes((MLL302_SRC + "\n\n").encode())
    fix_file(path)
    assert path.read_bytes() == (MLL302_FIXED + "\n\n").encode()


# -- encodings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cookie, encoding", [
    ("# -*- coding: latin-1 -*-", "latin-1"),
    ("# vim: set fileencoding=cp1252 :", "cp1252"),
    ("#!/usr/bin/env python\n# coding=iso-8859-15", "iso-8859-15"),
])
def test_the_encoding_cookie_is_kept(tmp_path, cookie, encoding):
    text = f"{cookie}\n# Größe: € {'' if encoding == 'latin-1' else 'Š'}\n{MLL302_SRC}".replace("€", "€" if encoding != "latin-1" else "¤")
    path = tmp_path / "t.py"
    path.write_bytes(text.encode(encoding))
    fix_file(path)
    assert path.read_bytes() == text.replace("memory_mask=", "memory_key_padding_mask=").encode(encoding)


def test_a_bom_is_kept_and_not_doubled(tmp_path):
    path = tmp_path / "t.py"
    path.write_bytes(BOM + newlines(MLL101_SRC, "\r\n").encode())
    fix_file(path)
    assert path.read_bytes() == BOM + newlines(MLL101_FIXED, "\r\n").encode()


def test_a_fix_the_encoding_cannot_hold_is_not_written(tmp_path):
    raw = "# -*- coding: ascii -*-\nx = 1\n".encode("ascii")
    path = tmp_path / "t.py"
    path.write_bytes(raw)
    with pytest.raises(SourceError) as info:
        write_source(read_source(str(path)), "# -*- coding: ascii -*-\nx = 'é'\n")
    assert info.value.message == "the fixed text cannot be encoded as ascii: ordinal not in range(128)"
    assert path.read_bytes() == raw and os.listdir(tmp_path) == ["t.py"]


# -- mode, owner, links ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o755, 0o640, 0o600, 0o2755])
def test_the_mode_is_kept(tmp_path, mode):
    path = tmp_path / "t.py"
    path.write_text(MLL302_SRC)
    os.chmod(path, mode)
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        pytest.skip("the file system does not keep this mode")
    fix_file(path)
    assert path.read_text() == MLL302_FIXED
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give files away")
def test_the_owner_is_kept_when_root_fixes_another_users_file(tmp_path):
    path = tmp_path / "t.py"
    path.write_text(MLL302_SRC)
    os.chown(path, 65534, 65534)
    fix_file(path)
    info = os.stat(path)
    assert path.read_text() == MLL302_FIXED
    assert (info.st_uid, info.st_gid) == (65534, 65534)


def test_a_symlink_stays_a_symlink_and_its_target_is_fixed(tmp_path):
    write(tmp_path, {"real/t.py": MLL302_SRC})
    os.symlink("real/t.py", tmp_path / "link.py")
    fix_file(tmp_path / "link.py")
    assert os.readlink(tmp_path / "link.py") == "real/t.py"
    assert (tmp_path / "real" / "t.py").read_text() == MLL302_FIXED
    assert sorted(os.listdir(tmp_path / "real")) == ["t.py"]


# -- atomicity -----------------------------------------------------------------------------------

def test_the_write_is_a_synced_temporary_file_renamed_over_the_original(tmp_path, monkeypatch):
    path = tmp_path / "t.py"
    path.write_text(MLL302_SRC)
    os.chmod(path, 0o640)
    synced, renames = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    def replace(src, dst):
        src_path = Path(src)
        renames.append((src_path.parent == path.parent, src_path.name.startswith(".mllint-"),
                        src_path.read_text(), stat.S_IMODE(os.stat(src).st_mode), path.read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(python_source.os, "fsync", fsync)
    monkeypatch.setattr(python_source.os, "replace", replace)
    fix_file(path)
    # Same directory (so the rename is atomic), complete content and mode before the rename,
    # and the original untouched until then.
    assert renames == [(True, True, MLL302_FIXED, 0o640, MLL302_SRC)]
    assert len(synced) == 1
    assert path.read_text() == MLL302_FIXED and os.listdir(tmp_path) == ["t.py"]


@pytest.mark.parametrize("failing", ["replace", "fsync", "chmod"])
def test_a_failed_write_leaves_the_original_and_no_temporary_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "t.py"
    path.write_text(MLL302_SRC)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(python_source.os, failing, boom)
    result = fix_file(path)
    assert [d.code for d in result.diagnostics] == ["MLL904", "MLL302"]
    assert result.diagnostics[0].message == "cannot write the fix: No space left on device"
    assert result.fixed == 0 and result.source == MLL302_SRC
    assert path.read_text() == MLL302_SRC and os.listdir(tmp_path) == ["t.py"]


# -- nothing to fix: nothing written -------------------------------------------------------------

UNFIXABLE = {
    "clean.py": CLEAN_SRC.encode(),
    "crlf.py": newlines(CLEAN_SRC, "\r\n").encode(),
    "cr.py": newlines(CLEAN_SRC, "\r").encode(),
    "mixed.py": b"import torch\r\nx = 1\ny = 2\r",
    "bom.py": BOM + b"x = 1\n",
    "latin1.py": "# -*- coding: latin-1 -*-\ns = 'caf\u00e9'".encode("latin-1"),
    "no_newline.py": b"x = 1",
    "tabs.py": b"def f():\n\treturn 1\n",
    "finding_without_fix.py": MLL302_SRC.replace("memory_mask=src_padding_mask", "memory_mask=make(src_padding_mask)").encode(),
    "broken.py": b"def f(:\n",
    "undecodable.py": b"x = '\xff'\n",
    "noqa.py": (MLL302_SRC.replace("src_padding_mask)\n", "src_padding_mask)  # noqa: MLL302\n")).encode(),
}


def test_files_without_a_fixable_finding_are_not_rewritten(tmp_path):
    write(tmp_path, UNFIXABLE)
    before = {name: os.stat(tmp_path / name) for name in UNFIXABLE}
    proc = run(["-q", "--fix", "--unsafe-fixes", "."], tmp_path)
    assert proc.returncode == 1  # broken.py, undecodable.py and the finding without a fix remain
    for name, raw in UNFIXABLE.items():
        after = os.stat(tmp_path / name)
        assert (tmp_path / name).read_bytes() == raw, name
        assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns), name
    assert sorted(os.listdir(tmp_path)) == sorted(UNFIXABLE)
