"""The csim backend (the real driver on the C-simulation library) against the golden model, and refusal of
corrupt or mismatched builds before anything runs."""
import shutil

import numpy as np
import pytest
from flow_fixtures import demo_layout

from accllm.host.backends import open_backend
from accllm.host.build import BuildDir
from accllm.host.generate import Generation
from accllm.host.sampling import SamplingParams

PROMPTS = ["def main(args):", "The function returns"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return demo_layout(tmp_path_factory, "host_build")


def _greedy(backend, tok, prompt, n=8):
    gen = Generation(backend, tok, prompt, SamplingParams(max_tokens=n, temperature=0))
    for _ in gen:
        pass
    return gen.output_ids


def test_csim_streams_exactly_the_golden_tokens_and_kv_cache(build):
    tok = BuildDir(build).tokenizer()
    with open_backend("csim", build) as csim, open_backend("golden", build) as golden:
        for prompt in PROMPTS:
            a, b = _greedy(csim, tok, prompt), _greedy(golden, tok, prompt)
            assert a == b, f"{prompt!r}: csim {a} vs golden {b}"
        # The occupied slots of the device's Λ cache hold the golden cache: 4-bit codes and zero points bit for
        # bit, float32 scales to float rounding noise (float post-processing, engine contract). Slots past the occupied
        # prefix may hold an earlier stream's tokens: nothing reads them.
        L = csim.driver.kv.layout
        occupied = L.occupied(csim.driver.kv.pos - 1)
        assert occupied == len(tok.encode(PROMPTS[-1])) + 7
        shape = (L.layers, 2, L.kv_heads, L.slots, L.slot_bytes)
        dev = np.frombuffer(csim.driver.kv.image(), np.uint8).reshape(shape)[:, :, :, :occupied]
        ref = np.frombuffer(golden.model.cache.packed(), np.uint8).reshape(shape)[:, :, :, :occupied]
        c = L.head_dim // 2
        ints = np.r_[0:c, L.slot_bytes - 1]
        assert int((dev[..., ints] != ref[..., ints]).sum()) == 0
        s_dev = dev[..., c:c + 4].copy().view(np.float32)
        s_ref = ref[..., c:c + 4].copy().view(np.float32)
        assert np.allclose(s_dev, s_ref, rtol=1e-6, atol=0), f"{int((s_dev != s_ref).sum())} scales differ"
        # And one step's logits agree to float32 rounding noise (integer parts are bit-exact by contract).
        csim.reset(), golden.reset()
        ids = tok.encode(PROMPTS[0])
        la, lb = csim.forward(ids), golden.forward(ids)
        assert np.abs(la - lb).max() <= 1e-4 * max(1.0, np.abs(lb).max())


def test_greedy_through_the_on_chip_top_k_equals_greedy_through_the_logits(build):
    """Greedy generation reads only the engine's top-K (forward_top); the same tokens as through the full logits
    (log-probabilities force the full-logits path), on the C-simulation and on the golden model; and the kernel's
    top-K is the host's top-K of its own full logits, ids and values."""
    from accllm.sim.topk import top_k

    tok = BuildDir(build).tokenizer()
    with open_backend("csim", build) as csim, open_backend("golden", build) as golden:
        assert csim.topk == 16 and golden.topk is None
        for backend in (csim, golden):
            for prompt in PROMPTS:
                via_top = _greedy(backend, tok, prompt)
                gen = Generation(backend, tok, prompt, SamplingParams(max_tokens=8, temperature=0), logprobs=0)
                assert via_top == [e.token_id for e in gen], (backend.name, prompt)
        ids = tok.encode(PROMPTS[1])
        csim.reset()
        top_ids, top_vals = csim.forward_top(ids, 16)
        csim.reset()
        ref_ids, ref_vals = top_k(csim.forward(ids), 16)
        assert np.array_equal(top_ids, ref_ids) and np.array_equal(top_vals, ref_vals)
        golden.reset()
        assert np.array_equal(golden.forward_top(ids, 16)[0], top_ids)


def _copy(build, tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    for name in ("program.bin", "weights.blob"):
        shutil.copyfile(build / name, d / name)
    (d / "hls").symlink_to((build / "hls").resolve())
    (d / "checkpoint").symlink_to((build / "checkpoint").resolve())
    return d


def _flip(path, offset_from_end):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupt_weight_blob_is_refused(build, tmp_path, monkeypatch):
    import accllm.host.csim as csim_mod

    d = _copy(build, tmp_path)
    _flip(d / "weights.blob", 100)
    monkeypatch.setattr(csim_mod, "csim_io", lambda *a: pytest.fail("the kernel was opened for a corrupt blob"))
    with pytest.raises(ValueError, match="checksum"):
        open_backend("csim", d)


def test_corrupt_or_wrong_version_program_is_refused(build, tmp_path):
    d = _copy(build, tmp_path)
    _flip(d / "program.bin", 5)
    with pytest.raises(ValueError, match="checksum"):
        open_backend("csim", d)
    d2 = tmp_path / "v"
    shutil.copytree(d, d2, symlinks=True)
    shutil.copyfile(build / "program.bin", d2 / "program.bin")
    data = bytearray((d2 / "program.bin").read_bytes())
    data[8] = 99  # the format version field
    (d2 / "program.bin").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="format version 99"):
        open_backend("csim", d2)


def test_program_compiled_for_another_blob_is_refused(build, tmp_path):
    from accllm.hls import blob as blobfmt
    from accllm.hls import container

    d = _copy(build, tmp_path)
    meta, payload = blobfmt.read_blob(d / "weights.blob")
    other = bytearray(payload)
    other[0] ^= 1  # a different (but internally consistent) blob
    container.write(d / "weights.blob", blobfmt.MAGIC, blobfmt.VERSION, meta, bytes(other))
    with pytest.raises(ValueError, match="different weight blob"):
        open_backend("csim", d)


def test_missing_build_and_unknown_backend_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_backend("csim", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        open_backend("tpu", tmp_path)
