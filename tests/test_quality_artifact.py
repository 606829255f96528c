"""The transport pack of a distilled checkpoint (bench/quality_artifact.py): what it leaves out (the embedding, the
pruned codes) is rebuilt exactly (every tensor equal); a damaged pack is refused."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accllm.quant.checkpoint import WEIGHTS_FILE, load_compressed, save_compressed
from accllm.quant.model import load_model
from accllm.quant.quantize import CompressionSettings
from accllm.quant.compress import compress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from quality_artifact import pack, unpack  # noqa: E402


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_unpack_rebuilds_every_tensor(tmp_path, bits):
    model, tok = load_model("bundled")
    s = CompressionSettings(weight_bits=bits, weight_method="rtn", prune_method="wanda", calib_samples=4,
                            calib_seqlen=32)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    ckpt = save_compressed(model, tok, s, masks, tmp_path / "ckpt", report={"steps_total": 0})
    parts = pack(ckpt, tmp_path / "pack" / "bundled", "bundled")
    packed = sum(p.stat().st_size for p in parts)
    assert packed < 0.75 * (ckpt / WEIGHTS_FILE).stat().st_size
    out = unpack(tmp_path / "pack" / "bundled", tmp_path / "rebuilt")
    want, got = load_file(str(ckpt / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert (out / "config.json").read_text() == (ckpt / "config.json").read_text()  # untied head stays untied
    x = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        ref, back = load_compressed(ckpt)[0], load_compressed(out)[0]
        assert torch.equal(back.model.embed_tokens.weight, ref.model.embed_tokens.weight)
        assert torch.equal(back(input_ids=x).logits, ref(input_ids=x).logits)


def test_a_quantised_head_tied_to_the_embedding_is_refused(tmp_path):
    import json

    model, tok = load_model("bundled")
    s = CompressionSettings(weight_bits=4, weight_method="rtn", prune_method="wanda", calib_samples=4, calib_seqlen=32)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    ckpt = save_compressed(model, tok, s, masks, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    cfg["tie_word_embeddings"] = True
    (ckpt / "config.json").write_text(json.dumps(cfg))
    from accllm.quant.integrity import write_manifest

    write_manifest(ckpt)
    with pytest.raises(ValueError, match="ties the head to the embedding"):
        load_compressed(ckpt)


def test_a_damaged_pack_is_refused(tmp_path):
    model, tok = load_model("bundled")
    s = CompressionSettings(weight_bits=2, weight_method="rtn", prune_method="wanda", calib_samples=4, calib_seqlen=32)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    ckpt = save_compressed(model, tok, s, masks, tmp_path / "ckpt")
    parts = pack(ckpt, tmp_path / "pack" / "bundled", "bundled")
    data = bytearray(parts[-1].read_bytes())
    data[-5] ^= 0xFF
    parts[-1].write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        unpack(tmp_path / "pack" / "bundled", tmp_path / "rebuilt")
