"""Reading inputs: normalization, invalid UTF-8 accounting, file/folder/glob resolution, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwlm.data import readers
from hwlm.data.normalize import normalize
from hwlm.data.readers import Utf8Stats, read_documents, resolve_inputs
from hwlm.errors import DataError


def test_normalize_nfkc_and_controls() -> None:
    assert normalize("ｆｕｌｌ\x00width\r\n\tx\x85", "nfkc", True) == "fullwidth\n\tx"
    assert normalize("ｆ\x00", "none", False) == "ｆ\x00"
    assert normalize("e\u0301", "nfc", False) == "\u00e9"
    # the zero-width joiner (category Cf) inside an emoji family survives control stripping
    family = "👩\u200d👩\u200d👧"
    assert normalize(family, "nfkc", True) == family


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_invalid_utf8_counted_replaced_with_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   chunk: int) -> None:
    monkeypatch.setattr(readers, "_CHUNK", chunk)  # small chunks split multi-byte sequences
    good = tmp_path / "a.txt"
    good.write_text("中文 fine\n", encoding="utf-8")
    data = "ok 中".encode() + b"\xff\xfe" + "文 é".encode() + b"\xe4\xb8"  # 2 stray bytes + truncated end
    bad = tmp_path / "b.txt"
    bad.write_bytes(data)
    stats = Utf8Stats()
    docs = list(read_documents([good, bad], form="none", strip_control=False, stats=stats))
    assert docs == ["中文 fine\n", data.decode("utf-8", "replace")]
    assert stats.count == 4
    assert stats.to_dict() == {"count": 4, "first": {"file": str(bad), "offset": len("ok 中".encode())}}


def test_invalid_utf8_in_jsonl_offset(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    line1 = b'{"text": "hello"}\n'
    f.write_bytes(line1 + b'{"text": "x\xffy"}\n')
    stats = Utf8Stats()
    assert list(read_documents([f], stats=stats)) == ["hello", "x\ufffdy"]
    assert stats.to_dict()["first"] == {"file": str(f), "offset": len(line1) + 11}


def test_large_text_file_is_cut_at_blank_lines(tmp_path: Path) -> None:
    paras = [f"paragraph {i} " * 5 for i in range(20)]
    f = tmp_path / "big.txt"
    f.write_text("\n\n".join(paras))
    docs = list(read_documents([f], max_doc_chars=200))
    assert len(docs) > 1 and all(len(d) <= 200 for d in docs)
    assert "\n\n".join(docs) == f.read_text()


def test_folder_glob_builtin_and_dedup(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / ".hidden").write_text("no")
    (tmp_path / "blob.dat").write_bytes(b"\x00\x01binary")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "sea"}) + "\n\n")
    stats = Utf8Stats()
    srcs = resolve_inputs([str(tmp_path), str(tmp_path / "*.txt")], stats)
    assert [Path(s.path).name for s in srcs] == ["a.txt", "c.jsonl", "b.md"]
    assert stats.skipped_files == [str(tmp_path / "blob.dat")]
    assert list(read_documents([tmp_path], text_field="body")) == ["ay", "sea", "bee"]
    builtin = list(read_documents([]))
    assert len(builtin) > 50 and all(d.strip() for d in builtin)


def test_bad_inputs_have_one_line_messages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"input .*nope does not exist: check the path"):
        resolve_inputs([str(tmp_path / "nope")])
    with pytest.raises(DataError, match=r"input glob .*\*\.zzz' matches no files"):
        resolve_inputs([str(tmp_path / "*.zzz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no readable text files"):
        resolve_inputs([str(tmp_path / "empty")])
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: no 'text' field; set --text-field"):
        list(read_documents([f]))
    f.write_text('{"text": "a"}\n\n{oops\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: not valid JSON \(.*\); fix or remove that line"):
        list(read_documents([f]))
    f.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: field 'text' is int, not a string"):
        list(read_documents([f]))


def test_package_exports_functions_not_shadowing_submodules() -> None:
    import hwlm.data
    import hwlm.data.normalize  # noqa: F401  (importing the submodule must not replace the function)
    import hwlm.data.pipeline  # noqa: F401
    from hwlm.data import normalize as fn, prepare

    assert callable(fn) and fn("ａ", "nfkc", True) == "a" and callable(prepare)
    assert sorted(hwlm.data.__all__) == sorted(set(hwlm.data.__all__))
    for name in hwlm.data.__all__:
        assert getattr(hwlm.data, name) is not None
