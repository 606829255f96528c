import json
import math

import pytest
import torch

from accllm.host.cli import main
from accllm.quant.corpus import load_documents, token_stream
from accllm.quant.evaluate import perplexity, unigram_perplexity


@pytest.fixture(scope="module")
def test_ids(bundled):
    return token_stream(bundled[1], load_documents("test"))


def test_every_token_scored_once(bundled, test_ids):
    model, _ = bundled
    ids = test_ids[:700]
    for stride in (64, 128, 255):
        assert perplexity(model, ids, 256, stride, progress=False)["tokens"] == len(ids) - 1


def test_single_window_equals_direct_loss(bundled, test_ids):
    model, _ = bundled
    ids = test_ids[:200]
    with torch.no_grad():
        direct = model(ids[None], labels=ids[None]).loss.exp().item()
    assert perplexity(model, ids, 256, 128, progress=False)["perplexity"] == pytest.approx(direct, rel=1e-5)


def test_more_history_never_hurts_much_and_model_beats_unigram(bundled, test_ids):
    model, tok = bundled
    ids = test_ids[:3000]
    short = perplexity(model, ids, 256, 255, progress=False)["perplexity"]
    overlapped = perplexity(model, ids, 256, 64, progress=False)["perplexity"]
    assert overlapped < short
    uni = unigram_perplexity(token_stream(tok, load_documents("train")), ids, len(tok))
    assert overlapped * 5 < uni


def test_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        perplexity(None, torch.arange(10), 8, 9)


def test_cli_eval_writes_json(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "--max-tokens", "600", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tokens"] == 599 and res["context"] == 256 and res["stride"] == 128
    assert math.isfinite(res["perplexity"]) and res["perplexity"] < res["unigram_perplexity"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_eval_missing_model_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
