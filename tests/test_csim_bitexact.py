import shutil

import numpy as np
import pytest

from flow_fixtures import PROMPTS, flow_paths, one_thread
from onnx_edits import copy_export, set_lambda


_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def _compare(golden, csim, tokens):
    from accllm.hls.csim import compare_with_golden

    r = compare_with_golden(golden, csim, tokens)
    return r["integer_mismatches"], r["integers_compared"], r["max_logit_diff"]


def test_csim_bit_exact_with_golden_every_layer(flow):
    from transformers import AutoTokenizer

    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.encode(PROMPTS[0]) + [7, 100, 2000]
    mism, total, dlogit = _compare(GoldenModel.load(ckpt), CSim(build), ids)
    assert total > 0 and mism == 0
    # Floats: both sides run accllm.sim.nonlinear's float32 arithmetic (correctly rounded operations, tables for exp
    # and cos/sin, the adder-tree sums); measured 0.0 here, bounded because torch's vector kernels differ between
    # x86 CPUs (its float32 sqrt is not even correctly rounded on this one).
    assert dlogit < 1e-4


def test_csim_bit_exact_on_random_token_streams(flow):
    """Random streams reach activations far from the prompts' (a float32 rounding the two sides did differently,
    e.g. in the softmax sum, shows up here as an int8 code off by one a few layers later)."""
    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    golden, csim = GoldenModel.load(ckpt), CSim(build)
    rng = np.random.default_rng(1)
    streams = [[11, 250, 3000, 42, 7]] + [rng.integers(0, golden.d.vocab, 12).tolist() for _ in range(4)]
    for ids in streams:
        mism, total, dlogit = _compare(golden, csim, ids)
        assert mism == 0, f"tokens {ids}: {mism} of {total} integers differ"
        assert dlogit < 1e-4, f"tokens {ids}: logits differ by {dlogit}"


def test_csim_bit_exact_through_ring_wrap_and_sink_rotation(flow, tmp_path):
    """A Λ cache of 2 sinks + 6 window slots, run for 20 tokens: the ring wraps and sink keys get the re-rotated query."""
    from accllm.hls.compiler import compile_export, weights_from_export
    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    _, onnx_dir, _ = flow
    small = copy_export(onnx_dir, tmp_path / "onnx")
    set_lambda(small, 2, 6)  # the Λ mask's constants in every layer graph
    compile_export(small, tmp_path / "build", progress=False)
    g = GoldenModel(weights_from_export(small, progress=False))
    mism, total, _ = _compare(g, CSim(tmp_path / "build"), list(range(3, 23)))
    assert total > 0 and mism == 0


def _same_tokens(flow, prompts, new):
    from transformers import AutoTokenizer

    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    tok = AutoTokenizer.from_pretrained(ckpt)
    g, c = GoldenModel.load(ckpt), CSim(build)
    return sum(g.generate(tok.encode(p), new) == c.generate(tok.encode(p), new) for p in prompts)


def test_csim_same_tokens_as_golden(flow):
    assert _same_tokens(flow, PROMPTS[:3], 10) == 3


@pytest.mark.slow
def test_csim_same_tokens_as_golden_20_prompts(flow):
    assert _same_tokens(flow, PROMPTS, 20) == len(PROMPTS)


def test_csim_refuses_program_for_other_blob(flow, tmp_path):
    from accllm.hls.csim import CSim

    _, _, build = flow
    other = tmp_path / "b"
    shutil.copytree(build, other)
    from accllm.hls import blob

    meta, payload = blob.read_blob(other / "weights.blob")
    p = bytearray(payload)
    p[100] ^= 1
    from accllm.hls import container

    container.write(other / "weights.blob", blob.MAGIC, blob.VERSION, meta, bytes(p))
    with pytest.raises(ValueError, match="different weight blob"):
        CSim(other)
