"""The weight blob is written from a spool file, not from memory: the file is byte for byte what the in-memory
container writer makes of the same sections, and reads back section by section."""
import numpy as np
import pytest

from accllm.hls import blob, container


def _sections():
    rng = np.random.default_rng(0)
    return {"embed": rng.standard_normal((37, 8)).astype(np.float16), "final_norm": rng.random(8, dtype=np.float32),
            "layers.0.q_proj.stream": rng.integers(0, 256, 1001, dtype=np.uint8),
            "layers.0.q_proj.scales": rng.random((8, 3), dtype=np.float32).T}  # not contiguous: copied on add


def test_spooled_blob_equals_the_in_memory_container(tmp_path):
    w = blob.BlobWriter()
    for name, a in _sections().items():
        w.add(name, a)
    sha = w.write(tmp_path / "a.blob", {"dims": {"layers": 1}})
    container.write(tmp_path / "b.blob", blob.MAGIC, blob.VERSION, {"dims": {"layers": 1}, "sections": w.sections},
                    w.payload())
    assert (tmp_path / "a.blob").read_bytes() == (tmp_path / "b.blob").read_bytes()
    meta, payload = blob.read_blob(tmp_path / "a.blob")
    assert container.sha256(payload) == sha and len(payload) == w.size
    for name, a in _sections().items():
        assert np.array_equal(blob.section(meta, payload, name), a)
        assert meta["sections"][name]["offset"] % blob.ALIGN == 0
    with pytest.raises(ValueError, match="duplicate blob section embed"):
        w.add("embed", np.zeros(1))


def test_write_from_a_short_source_is_refused(tmp_path):
    src = tmp_path / "payload"
    src.write_bytes(b"x" * 10)
    with open(src, "rb") as f, pytest.raises(ValueError, match="ended 5 bytes early"):
        container.write_from_file(tmp_path / "c.blob", blob.MAGIC, blob.VERSION, {}, 15, b"\0" * 32, f)
