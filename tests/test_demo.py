"""`accllm demo`: the whole flow on the bundled model with the streamed tokens checked against the golden model."""
import json

import pytest
from flow_fixtures import demo_layout

from accllm.host.cli import main


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return demo_layout(tmp_path_factory, "demo_build")


def test_golden_check_finds_equal_and_different_tokens(build):
    from accllm.host.demo import check_against_golden
    from accllm.host.build import BuildDir

    ids = BuildDir(build).tokenizer().encode("The function returns")
    ok = check_against_golden(build, ids, [0] * 6)  # a wrong stream: must be reported, not passed
    assert not ok["equal"] and ok["first_mismatch"] is not None
    good = check_against_golden(build, ids, ok["golden_ids"])
    assert good["equal"] and good["first_mismatch"] is None
    bad = list(ok["golden_ids"])
    bad[3] = (bad[3] + 1) % 4096
    assert check_against_golden(build, ids, bad)["first_mismatch"] == 3


def test_run_command_streams_and_writes_json(build, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", str(build), "--backend", "csim", "--prompt", "def main(args):", "--max-tokens", "6",
                 "--json", str(out)]) == 0
    cap = capsys.readouterr()
    rec = json.loads(out.read_text())
    assert cap.out.startswith("def main(args):") and rec["text"] in cap.out
    assert len(rec["output_ids"]) == rec["generated_tokens"] <= 6
    assert "time to first token" in cap.err and "tokens/s" in cap.err


def test_run_command_errors_are_one_line(build, capsys):
    assert main(["run", str(build), "--backend", "csim", "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p must lie in (0, 1]" in capsys.readouterr().err
    assert main(["run", str(build / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCLLM_CACHE", str(tmp_path / "cache"))  # nothing cached: the C-sim library is built too
    assert main(["demo", "-o", str(tmp_path / "demo"), "--max-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "tokens equal the golden model: yes (12/12 ids identical)" in out
    rec = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert rec["golden_check"]["equal"] and rec["golden_check"]["golden_ids"] == rec["output_ids"]
    assert rec["backend"] == "csim" and len(rec["output_ids"]) == 12
