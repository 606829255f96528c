"""Text every machine has: Python's pydoc topics and standard-library docstrings, split by document.

The splits are built once (``python -m accllm.quant.corpus``) and shipped gzipped in ``quant/data`` so
that training, calibration and evaluation see the same text whatever Python version runs them.
Documents are separated by a form feed; the split is a hash of the document's name, so adding a
document never moves another one between splits.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import sysconfig
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "valid", "test")
DOC_SEP = "\f"
# Per-mille of documents in each held-out split; calibration text is taken from "train" only.
_HELD_OUT = {"test": 60, "valid": 40}
_SKIP_TOP = {"site-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip"}


def _split_of(name: str) -> str:
    h = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000
    if h < _HELD_OUT["test"]:
        return "test"
    if h < _HELD_OUT["test"] + _HELD_OUT["valid"]:
        return "valid"
    return "train"


def _docstrings(tree: ast.AST) -> list[str]:
    out = []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)

    def visit(node):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                out.append(doc.strip())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def collect_documents() -> dict[str, str]:
    """Return {document name: text} from pydoc topics and the stdlib's docstrings (source order)."""
    import pydoc_data.topics as topics

    docs = {f"topic:{k}": v.strip() for k, v in sorted(topics.topics.items())}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in _SKIP_TOP or "tests" in rel.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        parts = _docstrings(tree)
        if parts:
            docs[f"module:{rel.as_posix()}"] = "\n\n".join(parts)
    return docs


def build_splits(out_dir: Path = DATA_DIR) -> dict[str, Path]:
    docs = collect_documents()
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name, text in docs.items():
        by_split[_split_of(name)].append(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, texts in by_split.items():
        path = out_dir / f"{split}.txt.gz"
        # mtime=0 keeps the archive byte-identical between runs.
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(DOC_SEP.join(texts).encode("utf-8"))
        written[split] = path
    return written


def load_documents(split: str, data_dir: Path = DATA_DIR) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = data_dir / f"{split}.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"corpus split {path} is missing; build it with `python -m accllm.quant.corpus`")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split(DOC_SEP)


def load_text(split: str, data_dir: Path = DATA_DIR) -> str:
    """The split as one string, documents joined by blank lines (what evaluation streams through)."""
    return "\n\n".join(load_documents(split, data_dir))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)
    for split, path in build_splits(args.out).items():
        docs = load_documents(split, args.out)
        print(f"wrote {path} ({len(docs)} documents, {sum(map(len, docs))} characters)")



# English prose every Debian machine has: the licence texts. Held out ("test"): GPL-3, LGPL-3, Apache-2.0,
# MPL-2.0; calibration / distillation ("train"): the others, except GPL-2 and MPL-1.1, which are earlier
# versions of two test texts and so are used for nothing.
ENGLISH_DIR = Path("/usr/share/common-licenses")
ENGLISH_SPLITS = {"test": ("GPL-3", "LGPL-3", "Apache-2.0", "MPL-2.0"),
                  "train": ("GPL-1", "LGPL-2", "LGPL-2.1", "GFDL-1.2", "GFDL-1.3", "Artistic", "BSD", "CC0-1.0")}


def english_documents(split: str, root: Path = ENGLISH_DIR) -> list[str]:
    """The licence texts of ``split`` ("test" or "train", see ``ENGLISH_SPLITS``) from ``root``."""
    if split not in ENGLISH_SPLITS:
        raise ValueError(f"unknown English split {split!r}; expected one of {tuple(ENGLISH_SPLITS)}")
    missing = [n for n in ENGLISH_SPLITS[split] if not (Path(root) / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)} (Debian's base-files package ships them)")
    return [(Path(root) / n).read_text(encoding="utf-8") for n in ENGLISH_SPLITS[split]]


def english_fingerprint(root: Path = ENGLISH_DIR) -> dict:
    """sha256 of each English text, so a result names exactly the files it was measured on."""
    return {n: hashlib.sha256((Path(root) / n).read_bytes()).hexdigest()[:16]
            for names in ENGLISH_SPLITS.values() for n in names}


def token_stream(tokenizer, docs: list[str]):
    """One long id tensor: ``<s> doc </s>`` for each document, the layout training and evaluation share."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.append(bos)
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


if __name__ == "__main__":
    main()
