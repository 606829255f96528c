"""Distillation from a flow file: the compression keys qat_lr / qat_batch / qat_seconds / qat_learn_masks reach the
compress step (SparseGPT + GPTQ + distillation from the float model on teacher generations), the checkpoint records
them, a changed key reruns compress, and bad values are refused naming the key (the bundled tiny model)."""

import pytest
import yaml

from flow_fixtures import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)

COMPRESSION = {"sparsity": "2:4", "weight_bits": 4, "group_size": 32, "weight_method": "gptq",
               "prune_method": "sparsegpt", "calib_text": "python+english", "sinks": 2, "window": 14,
               "calib_samples": 4, "calib_seqlen": 32, "qat_steps": 3, "qat_lr": 1e-4, "qat_batch": 2,
               "qat_generated": 2, "qat_learn_masks": True}


def _flow(tmp_path, **compression):
    cfg = {"name": "distill", "model": "bundled", "compression": {**COMPRESSION, **compression},
           "engine": {"lanes": 16, "group_size": 32, "sinks": 2, "window": 14}, "steps": ["compress"], "verify": [],
           "evaluation": {"perplexity_tokens": 0}}
    p = tmp_path / "flow.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from accllm.host.flow import build

    d = tmp_path_factory.mktemp("flow_distill")
    flow = _flow(d)
    state, _ = build(flow, d / "b")
    return flow, d / "b", state


def test_compress_step_distils_and_records_the_keys(built):
    import json

    from accllm.quant.checkpoint import load_compressed
    from accllm.quant.prune import check_2to4, decoder_linears

    _, out, state = built
    assert state["ran"] == ["compress"]
    ckpt = out / "compress"
    made = json.loads((ckpt / "compression.json").read_text())["settings"]
    assert {k: made[k] for k in ("qat_steps", "qat_lr", "qat_batch", "qat_seconds", "qat_generated",
                                 "qat_learn_masks", "prune_method", "weight_method", "calib_seqlen")} == {
        "qat_steps": 3, "qat_lr": 1e-4, "qat_batch": 2, "qat_seconds": 0.0, "qat_generated": 2,
        "qat_learn_masks": True, "prune_method": "sparsegpt", "weight_method": "gptq", "calib_seqlen": 32}
    qat = json.loads((ckpt / "report.json").read_text())["qat"]
    assert qat["steps_run"] == 3 and qat["kl_first"] > 0 and qat["kl_last_50_mean"] > 0
    assert qat["distill_stats"]["batch"] == 2 and qat["distill_stats"]["seqlen"] == 32
    model, _, s = load_compressed(ckpt)
    assert s.qat_learn_masks and s.qat_steps == 3
    lins = decoder_linears(model)
    assert len(lins) == 6 * 7
    for name, m in lins.items():
        mask = m.sparse_mask
        blocks = mask.reshape(mask.shape[0], -1, 4).sum(-1)
        assert bool((blocks == 2).all()), f"{name}: a block of four inputs without exactly two kept"
        w = m.quant_weight().value.reshape(mask.shape)
        assert check_2to4(w) == 0 and not bool(w[~mask].any()), name


def test_changed_distillation_key_reruns_compress(tmp_path, built):
    from accllm.host.flow import input_hash
    from accllm.host.flow_config import load_flow
    from accllm.host.flow_steps import STEPS

    flow, out, _ = built
    compress = STEPS[0]
    base = input_hash(compress, load_flow(flow), {})
    assert input_hash(compress, load_flow(_flow(tmp_path)), {}) == base
    for key, value in (("qat_lr", 2e-4), ("qat_batch", 4), ("qat_seconds", 30), ("qat_learn_masks", False)):
        assert input_hash(compress, load_flow(_flow(tmp_path, **{key: value})), {}) != base, key
    from accllm.host.flow import build

    assert build(flow, out)[0]["ran"] == []  # nothing changed: the distilled checkpoint is kept
    assert build(_flow(tmp_path, qat_lr=2e-4), out)[0]["ran"] == ["compress"]


@pytest.mark.parametrize("over, message", [
    ({"qat_lr": 0}, r"compression\.qat_lr: Input should be greater than 0"),
    ({"qat_batch": 0}, r"compression\.qat_batch: Input should be greater than 0"),
    ({"qat_seconds": -1}, r"compression\.qat_seconds: Input should be greater than or equal to 0"),
    ({"sparsity": "none"}, r"compression: .*qat_learn_masks needs sparsity '2:4' \(got 'none'\)"),
    ({"qat_steps": 0, "qat_generated": 0}, r"compression: .*qat_learn_masks needs qat_steps > 0"),
])
def test_bad_distillation_keys_are_refused_naming_the_key(tmp_path, over, message):
    from accllm.host.flow_config import FlowError, load_flow

    with pytest.raises(FlowError, match=message) as e:
        load_flow(_flow(tmp_path, **over))
    assert "\n" not in str(e.value)


def test_dense_w4_distilled_in_the_flow_runs_bit_exact_to_csim(tmp_path):
    """smollm2_dense_distill.yaml's path on the bundled model: dense GPTQ W4 linears distilled in the compress step
    (no 2:4 anywhere), then export, compile and C-simulation, verified against the golden model in integers."""
    import json

    from accllm.host.flow import build
    from accllm.quant.checkpoint import load_compressed
    from accllm.quant.prune import decoder_linears

    flow = _flow(tmp_path, sparsity="none", prune_method="wanda", qat_learn_masks=False)
    raw = yaml.safe_load(flow.read_text())
    raw.update(steps=["compress", "export", "compile", "csim"], verify=["compile", "csim"],
               evaluation={"prompts": ["The return statement"], "max_new_tokens": 4, "perplexity_tokens": 0})
    flow.write_text(yaml.safe_dump(raw))
    state, _ = build(flow, tmp_path / "b")
    assert state["ran"] == ["compress", "export", "compile", "csim"]
    qat = json.loads((tmp_path / "b" / "compress" / "report.json").read_text())["qat"]
    assert qat["steps_run"] == 3
    model, _, s = load_compressed(tmp_path / "b" / "compress")
    assert s.sparsity == "none" and s.weight_bits == 4
    assert not any(hasattr(m, "sparse_mask") for m in decoder_linears(model).values())
    from accllm.hls import program as prog
    from accllm.sim.weight_stream import MODE_DENSE

    _, instrs, _, _, _ = prog.read_compiled(tmp_path / "b" / "compile")
    assert {prog.split_mode(i.mode) for i in instrs if i.op == prog.OP_LINEAR} == {(MODE_DENSE, 4)}
    v = state["steps"]["csim"]["verification"]
    assert v["prompts_same_tokens"] == "1/1" and v["integer_mismatches"] == 0 and v["integers_compared"] > 0
