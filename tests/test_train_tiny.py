import json

from accllm.quant.model import load_model
from accllm.quant.train_tiny import main


def test_training_script_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    main(["--out", str(out), "--device", "cpu", "--steps", "4", "--eval-every", "2", "--batch", "2",
          "--vocab", "600", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1",
          "--intermediate", "64", "--context", "32"])
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [2, 4]
    assert log["trained_context"] == 32 and "--steps 4" in log["command"]
    model, tok = load_model(out)
    assert model.config.num_hidden_layers == 1 and len(tok) == 600
