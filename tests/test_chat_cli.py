"""``accllm chat`` on the bundled model's build (plain template): multi-turn history through the template, the
C-simulation's streamed reply equal to the golden model's greedy tokens, standard input as the turn source."""
import io
import json

import pytest
from flow_fixtures import demo_layout, one_thread

from accllm.host.backends import open_backend
from accllm.host.build import BuildDir
from accllm.host.chat import ChatTemplate
from accllm.host.cli import main
from accllm.host.generate import Generation
from accllm.host.sampling import SamplingParams

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return demo_layout(tmp_path_factory, "chat_build")


def _golden(build, ids, n):
    b = BuildDir(build)
    with open_backend("golden", build) as golden:
        gen = Generation(golden, b.tokenizer(), ids, SamplingParams(max_tokens=n, temperature=0,
                                                                    stop=ChatTemplate.plain().stops))
        list(gen)
    return gen.output_ids


def test_two_turns_carry_history_and_match_the_golden_model(build, tmp_path, capsys):
    out = tmp_path / "chat.json"
    assert main(["chat", str(build), "--message", "What does def do?", "--message", "And return?",
                 "--system", "You are terse.", "--max-tokens", "5", "--ignore-eos", "--json", str(out)]) == 0
    turns = json.loads(out.read_text())["turns"]
    assert len(turns) == 2
    tok = BuildDir(build).tokenizer()
    first = "system: You are terse.\nuser: What does def do?\nassistant:"
    assert turns[0]["prompt_ids"] == tok.encode(first)
    # The second prompt is the whole conversation: the first reply is in it.
    second = first + f" {turns[0]['assistant'].strip()}\nuser: And return?\nassistant:"
    assert turns[1]["prompt_ids"] == tok.encode(second)
    for t in turns:
        assert 1 <= len(t["output_ids"]) <= 5
        assert t["output_ids"] == _golden(build, t["prompt_ids"], 5)
        assert t["time_to_first_token_s"] > 0
    captured = capsys.readouterr()
    assert turns[1]["assistant"].strip() in captured.out
    assert captured.err.count("time to first token") == 2


def test_turns_from_standard_input(build, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\nWhat is a list?\n"))
    out = tmp_path / "chat.json"
    assert main(["chat", str(build), "--max-tokens", "3", "--ignore-eos", "--json", str(out)]) == 0
    turns = json.loads(out.read_text())["turns"]
    assert [t["user"] for t in turns] == ["Hello", "What is a list?"]
    assert "user: What is a list?" in capsys.readouterr().out


def test_empty_message_is_one_line_error(build, capsys):
    assert main(["chat", str(build), "--message", "  "]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "accllm chat: error: the message is empty"
