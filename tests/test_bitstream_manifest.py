"""The runtime refuses a bitstream that does not match its manifest entry or the compiled program."""
import json
import os

import pytest

from accllm.bitstreams import manifest as mf


DIMS = {"vocab": 4096, "hidden": 256, "layers": 6, "heads": 8, "kv_heads": 4, "head_dim": 32, "group": 32}


def _entry(flow="vivado", **kw):
    arts = {"xclbin": {"path": "u280/x.xclbin"}} if flow == "vitis" else {"bit": {"path": "kv260/x.bit"},
                                                                          "hwh": {"path": "kv260/x.hwh"}}
    e = {"name": "x", "board": "u280" if flow == "vitis" else "kv260", "flow": flow, "kernel": "accllm_kernel",
         "engine": {"lanes": 16, "group": 32}, "dims": DIMS, "program_format": 3, "blob_format": 2, "clock_mhz": 200.0,
         "artifacts": arts, "recipe": "u280" if flow == "vitis" else "zynq"}
    e.update(kw)
    return e


HEADER = {"program_format": 3, "blob_format": 2, "lanes": 16, "group": 32, "block": 1, "dims": DIMS}


@pytest.fixture
def built(tmp_path):
    """A manifest with one PYNQ entry whose (fake, random) .bit/.hwh were 'built' and recorded."""
    (tmp_path / "kv260").mkdir()
    for ext in ("bit", "hwh"):
        (tmp_path / "kv260" / f"x.{ext}").write_bytes(os.urandom(4096))
    m = mf.Manifest(bitstreams=[mf.BitstreamEntry.model_validate(_entry())])
    mf.record_build(m, "x", tmp_path, tool="test")
    path = mf.save_manifest(m, tmp_path / "manifest.json")
    return mf.load_manifest(path), tmp_path


def test_matching_bitstream_is_accepted(built):
    m, root = built
    e = m.entry("x")
    assert e.built and len(e.artifacts["bit"].sha256) == 64
    assert mf.verify_bitstream(e, root / "kv260" / "x.bit", HEADER, board="kv260").name == "x"
    # an object with attributes works as the header too
    assert mf.verify_bitstream(e.model_dump(), root / "kv260" / "x.bit", type("H", (), HEADER)()).name == "x"


def test_wrong_sha256_refused(built):
    m, root = built
    bit = root / "kv260" / "x.bit"
    data = bytearray(bit.read_bytes())
    data[100] ^= 1
    bit.write_bytes(bytes(data))
    with pytest.raises(mf.BitstreamMismatch, match=r"bit: sha256 of .* the manifest says"):
        mf.verify_bitstream(m.entry("x"), bit, HEADER)


def test_wrong_hwh_refused(built):
    m, root = built
    (root / "kv260" / "x.hwh").write_bytes(b"<other/>")
    with pytest.raises(mf.BitstreamMismatch, match="hwh: sha256"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", HEADER)
    (root / "kv260" / "x.hwh").unlink()
    with pytest.raises(mf.BitstreamMismatch, match="hwh: file .* not found"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", HEADER)


def test_wrong_board_refused(built):
    m, root = built
    with pytest.raises(mf.BitstreamMismatch, match="board: the manifest entry is for 'kv260', this is 'zcu104'"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", HEADER, board="zcu104")


@pytest.mark.parametrize("key,value,words", [("program_format", 4, "format version 4"), ("blob_format", 1, "format version 1"),
                                             ("lanes", 8, "engine parameter 8"), ("group", 128, "engine parameter 128"),
                                             ("block", 4, "engine parameter 4")])
def test_program_mismatch_refused(built, key, value, words):
    m, root = built
    with pytest.raises(mf.BitstreamMismatch, match=f"{key}: the program has {words}"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", {**HEADER, key: value})


def test_other_model_refused(built):
    """Same formats and engine parameters, but the kernel was synthesised for other model dimensions."""
    m, root = built
    with pytest.raises(mf.BitstreamMismatch, match=r"differ in hidden \(512 vs 256\), layers \(12 vs 6\)"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", {**HEADER, "dims": {**DIMS, "hidden": 512, "layers": 12}})


def test_header_missing_field_refused(built):
    m, root = built
    with pytest.raises(mf.BitstreamMismatch, match="blob_format: the program header does not state it"):
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", {k: v for k, v in HEADER.items() if k != "blob_format"})


def test_every_problem_is_listed(built):
    m, root = built
    with pytest.raises(mf.BitstreamMismatch) as ei:
        mf.verify_bitstream(m.entry("x"), root / "kv260" / "x.bit", {**HEADER, "lanes": 8, "program_format": 9}, board="u280")
    assert str(ei.value).count("\n  ") == 3


def test_unbuilt_entry_refused(tmp_path):
    (tmp_path / "x.xclbin").write_bytes(b"not built")
    e = mf.BitstreamEntry.model_validate(_entry("vitis"))
    with pytest.raises(mf.BitstreamMismatch, match="marked unbuilt"):
        mf.verify_bitstream(e, tmp_path / "x.xclbin", HEADER)


def test_schema_rejects_bad_entries():
    with pytest.raises(ValueError, match="artifacts"):
        mf.BitstreamEntry.model_validate(_entry("vitis", artifacts={"bit": {"path": "a.bit"}}))
    with pytest.raises(ValueError, match="marked built but an artifact has no sha256"):
        mf.BitstreamEntry.model_validate(_entry(built=True))
    with pytest.raises(ValueError, match="duplicate"):
        mf.Manifest(bitstreams=[mf.BitstreamEntry.model_validate(_entry())] * 2)


def test_record_needs_the_artifacts(tmp_path):
    m = mf.Manifest(bitstreams=[mf.BitstreamEntry.model_validate(_entry("vitis"))])
    with pytest.raises(FileNotFoundError, match="build it first"):
        mf.record_build(m, "x", tmp_path)


def test_committed_manifest_claims_only_real_builds():
    """No entry of bitstreams/manifest.json may claim a build whose artifact is absent or differs."""
    m = mf.load_manifest()
    root = mf.DEFAULT_MANIFEST.parent
    for e in m.bitstreams:
        for kind, a in e.artifacts.items():
            if e.built:
                assert (root / a.path).is_file(), f"{e.name}: built, but {a.path} is not committed"
                assert mf.sha256_file(root / a.path) == a.sha256
            else:
                assert a.sha256 is None
    assert json.loads(mf.DEFAULT_MANIFEST.read_text())["format"] == mf.MANIFEST_FORMAT
