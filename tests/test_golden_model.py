import numpy as np
import pytest
import torch

from flow_fixtures import PROMPTS, flow_paths, one_thread


_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


@pytest.fixture(scope="session")
def brevitas(flow):
    from accllm.quant.checkpoint import load_compressed

    return load_compressed(flow[0])


def _golden_vs_brevitas(ckpt, brev, prompts, new):
    from accllm.sim.golden import GoldenModel, brevitas_generate

    model, tok, _ = brev
    g = GoldenModel.load(ckpt)
    worst, same = 0.0, 0
    for p in prompts:
        ids = tok.encode(p)
        ref, ref_logits = brevitas_generate(model, ids, new)
        g.reset()
        for t in ids:
            lg = g.step(t)
        out = []
        for i in range(new):
            worst = max(worst, float((lg - ref_logits[i]).abs().max()) / float(ref_logits[i].abs().max()))
            out.append(int(lg.argmax()))
            if out[-1] != ref[i]:
                break  # contexts differ from here on: logits are no longer comparable
            lg = g.step(out[-1])
        same += out == ref
    return same, worst


def test_golden_matches_brevitas_tokens(flow, brevitas):
    same, rel = _golden_vs_brevitas(flow[0], brevitas, PROMPTS[:4], 12)
    assert same == 4
    assert rel < 0.05  # max |logit error| / max |logit|; measured ~0.01 (int8 rounding flips)


@pytest.mark.slow
def test_golden_matches_brevitas_tokens_20_prompts(flow, brevitas):
    same, rel = _golden_vs_brevitas(flow[0], brevitas, PROMPTS, 20)
    # Measured 19/20 on the bundled QAT checkpoint: one prompt flips at a near-tie after several tokens.
    assert same >= len(PROMPTS) - 1
    assert rel < 0.05


def test_golden_from_model_equals_golden_from_checkpoint(flow, brevitas):
    from accllm.sim.golden import GoldenModel

    a, b = GoldenModel.load(flow[0]), GoldenModel.load(brevitas[0])
    la = [a.step(t) for t in (5, 17, 300)]
    lb = [b.step(t) for t in (5, 17, 300)]
    assert all(torch.equal(x, y) for x, y in zip(la, lb))


def test_golden_rejects_bad_token(flow):
    from accllm.sim.golden import GoldenModel

    g = GoldenModel.load(flow[0])
    with pytest.raises(ValueError, match="vocabulary"):
        g.step(g.d.vocab)


def test_kv4_packing_round_trip_and_nibble_order():
    from accllm.sim.kv_layout import pack_kv4, unpack_kv4

    c = np.random.default_rng(0).integers(0, 16, (3, 5, 32))
    p = pack_kv4(c)
    assert p.shape == (3, 5, 16) and np.array_equal(unpack_kv4(p), c)
    assert pack_kv4([1, 2])[0] == 0x21
    with pytest.raises(ValueError):
        pack_kv4([16, 0])


def test_lambda_layout_matches_attention_policy():
    from accllm.quant.attention import LambdaPolicy, visibility
    from accllm.sim.kv_layout import KVLayout

    lay, pol = KVLayout(1, 1, 4, sinks=3, window=5), LambdaPolicy(3, 5)
    for pos in range(40):
        assert lay.slot_of(pos) == int(pol.slot_of(torch.tensor(pos)))
        held = lay.slot_positions(pos)
        assert len(set(lay.slot_of(int(p)) for p in held)) == len(held)  # one position per slot
        vis = visibility(torch.tensor([pos]), torch.arange(pos + 1), pol)[0]
        assert sorted(held.tolist()) == torch.nonzero(vis).flatten().tolist()  # occupied == visible
