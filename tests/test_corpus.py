import gzip

import pytest

from accllm.quant import corpus


def test_splits_are_disjoint_by_document():
    splits = {s: set(corpus.load_documents(s)) for s in corpus.SPLITS}
    assert all(len(v) > 10 for v in splits.values())
    assert not splits["train"] & splits["test"]
    assert not splits["train"] & splits["valid"]
    assert not splits["valid"] & splits["test"]


def test_split_assignment_is_a_stable_hash():
    # The same name always lands in the same split, and roughly the configured share is held out.
    names = [f"doc{i}" for i in range(4000)]
    first = [corpus._split_of(n) for n in names]
    assert first == [corpus._split_of(n) for n in names]
    held = sum(s != "train" for s in first) / len(names)
    assert 0.07 < held < 0.13


def test_rebuilt_documents_match_the_shipped_assignment(tmp_path):
    docs = corpus.collect_documents()
    shipped_test = set(corpus.load_documents("test"))
    for name, text in docs.items():
        if text in shipped_test:
            assert corpus._split_of(name) == "test", name


def test_token_stream_layout(bundled):
    _, tok = bundled
    ids = corpus.token_stream(tok, ["hello world", "def f(): pass"])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert (ids == tok.bos_token_id).sum() == 2 and (ids == tok.eos_token_id).sum() == 2
    assert tok.decode(ids[1 : ids.tolist().index(tok.eos_token_id)]) == "hello world"


def test_unknown_split_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        corpus.load_documents("dev")
    with pytest.raises(FileNotFoundError, match="missing"):
        corpus.load_documents("test", data_dir=tmp_path)
    (tmp_path / "x.gz").write_bytes(gzip.compress(b""))
