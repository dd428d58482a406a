"""Reading and writing files: encodings, BOM, newlines, modes, atomicity, concurrent changes."""

from __future__ import annotations

import codecs
import os

import pytest

from mllint.sources.python import SourceError, decode, read_source, write_source


def test_decode_utf8_bom_and_crlf_are_kept_apart():
    text, encoding, bom = decode(codecs.BOM_UTF8 + b"x = 1\r\ny = 2\r\n")
    assert (text, encoding, bom) == ("x = 1\r\ny = 2\r\n", "utf-8", True)


def test_decode_pep263_cookie():
    raw = "# -*- coding: latin-1 -*-\ns = 'é'\n".encode("latin-1")
    text, encoding, bom = decode(raw)
    assert "é" in text and encoding == "iso-8859-1" and not bom


@pytest.mark.parametrize("raw, fragment", [
    (b"s = '\xff\xfe'\n", "cannot decode the file as utf-8 at line 1"),
    (b"# -*- coding: klingon -*-\nx = 1\n", "cannot decode the file"),
])
def test_decode_errors_are_mll903(raw, fragment):
    with pytest.raises(SourceError) as info:
        decode(raw)
    assert info.value.code == "MLL903" and fragment in info.value.message


def test_write_keeps_bom_newlines_encoding_and_mode(tmp_path):
    path = tmp_path / "t.py"
    raw = codecs.BOM_UTF8 + "# é\r\nx = 1\r\n".encode("utf-8")
    path.write_bytes(raw)
    os.chmod(path, 0o640)
    source = read_source(str(path))
    write_source(source, source.text.replace("x = 1", "x = 2"))
    assert path.read_bytes() == codecs.BOM_UTF8 + "# é\r\nx = 2\r\n".encode("utf-8")
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["t.py"]  # no temporary file left behind


def test_write_refuses_a_file_changed_since_it_was_read(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("x = 1\n")
    source = read_source(str(path))
    path.write_text("x = 3\n")
    with pytest.raises(SourceError) as info:
        write_source(source, "x = 2\n")
    assert info.value.code == "MLL904" and "changed" in info.value.message
    assert path.read_text() == "x = 3\n"


def test_unencodable_fix_leaves_the_file_alone(tmp_path):
    path = tmp_path / "t.py"
    raw = "# -*- coding: latin-1 -*-\nx = 1\n".encode("latin-1")
    path.write_bytes(raw)
    with pytest.raises(SourceError):
        write_source(read_source(str(path)), "# -*- coding: latin-1 -*-\nx = '\u4e2d'\n")
    assert path.read_bytes() == raw


def test_unreadable_path_is_mll904(tmp_path):
    with pytest.raises(SourceError) as info:
        read_source(str(tmp_path / "missing.py"))
    assert info.value.code == "MLL904"
