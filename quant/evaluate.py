"""Held-out perplexity: sliding-window evaluation of a causal LM, and a unigram baseline."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, context: int, stride: int, progress: bool = True) -> dict:
    """Sliding-window perplexity. The first window scores its first ``context - 1`` predictions; each
    later window of ``context`` tokens ends ``stride`` tokens further and scores only those ``stride``
    new tokens, each with at least ``context - stride`` tokens of history. Every token after the first
    is scored exactly once."""
    if not 0 < stride < context:
        raise ValueError(f"stride must be in 1..context-1 ({context - 1}), got {stride}")
    device = next(model.parameters()).device
    n = len(ids)
    ends = list(range(min(context, n), n, stride)) + [n]
    nll, count, scored_to = 0.0, 0, 1
    for end in tqdm(sorted(set(ends)), desc="perplexity", disable=not progress, mininterval=2):
        x = ids[max(0, end - context) : end].unsqueeze(0).to(device)
        logits = model(x).logits[0, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
        new = end - scored_to
        nll += losses[-new:].sum().item()
        count += new
        scored_to = end
    return {"perplexity": math.exp(nll / count), "tokens": count, "context": context, "stride": stride}


def unigram_perplexity(train_ids: torch.Tensor, test_ids: torch.Tensor, vocab_size: int) -> float:
    """Add-one smoothed unigram model fitted on the training tokens, scored on the test tokens."""
    counts = Counter(train_ids.tolist())
    total = len(train_ids) + vocab_size
    logp = {t: math.log((c + 1) / total) for t, c in counts.items()}
    floor = math.log(1 / total)
    scored = test_ids[1:].tolist()
    return math.exp(-sum(logp.get(t, floor) for t in scored) / len(scored))


def add_eval_arguments(p):
    from accllm.quant.model import MODEL_HELP

    p.add_argument("--model", default="bundled", help=MODEL_HELP + " (default: bundled)")
    p.add_argument("--split", default="test", choices=["test", "valid", "english"],
                   help="held-out split of the shipped Python-docs corpus, or the held-out English licence texts")
    p.add_argument("--context", type=int, default=None, help="window length (default: the model's trained context)")
    p.add_argument("--stride", type=int, default=None, help="window advance (default: half the context)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--json", type=Path, default=Path("eval.json"), help="where to write the results")


def evaluate_command(args) -> int:
    from accllm.quant.corpus import english_documents, load_documents, token_stream
    from accllm.quant.model import load_model, trained_context

    model, tok = load_model(args.model)
    context = args.context or trained_context(model.config)
    stride = args.stride or max(1, context // 2)
    docs = english_documents("test") if args.split == "english" else load_documents(args.split)
    test_ids = token_stream(tok, docs)
    if args.max_tokens:
        test_ids = test_ids[: args.max_tokens]
    result = perplexity(model, test_ids, context, stride)
    result["unigram_perplexity"] = unigram_perplexity(token_stream(tok, load_documents("train")), test_ids, len(tok))
    result.update(model=str(args.model), split=args.split,
                  parameters=sum(p.numel() for p in model.parameters()),
                  trained_context=trained_context(model.config))
    print(f"{args.split} perplexity {result['perplexity']:.3f} over {result['tokens']} tokens "
          f"(context {context}, stride {stride}); unigram baseline {result['unigram_perplexity']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0


def register(sub):
    p = sub.add_parser("eval", help="held-out perplexity of a model (bundled by default), written as JSON")
    add_eval_arguments(p)
    p.set_defaults(func=evaluate_command)
