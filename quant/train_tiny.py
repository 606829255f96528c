"""Train the bundled tiny Llama: a byte-level BPE tokenizer and a LlamaForCausalLM on the shipped corpus.

    python -m accllm.quant.train_tiny --out quant/bundled/tiny-llama --device cuda

The validation split picks the best checkpoint; the test split is never seen here.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from accllm.quant.corpus import load_documents, token_stream

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1 << 20, **SPECIALS)


def make_config(tokenizer, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, context: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def window_loss(model, ids: torch.Tensor, context: int, device, batch: int = 32) -> float:
    """Mean next-token loss over non-overlapping windows (a cheap validation score)."""
    n = (len(ids) - 1) // context
    x = ids[: n * context + 1]
    inputs = x[:-1].view(n, context)
    targets = x[1:].view(n, context)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        logits = model(inputs[i : i + batch].to(device)).logits.float()
        t = targets[i : i + batch].to(device)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="sum").item()
        count += t.numel()
    return total / count


def train(args) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_docs, valid_docs = load_documents("train"), load_documents("valid")
    tokenizer = train_tokenizer(train_docs, args.vocab)
    train_ids, valid_ids = token_stream(tokenizer, train_docs), token_stream(tokenizer, valid_docs)
    cfg = make_config(tokenizer, args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.context)
    model = LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokens: train {len(train_ids)}, valid {len(valid_ids)}; parameters {n_params}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    log, best, best_state = [], float("inf"), None
    t0 = time.time()
    for step in tqdm(range(1, args.steps + 1), desc="train", mininterval=5):
        model.train()
        starts = torch.randint(0, len(train_ids) - args.context - 1, (args.batch,), generator=gen)
        xb = torch.stack([train_ids[s : s + args.context + 1] for s in starts.tolist()]).to(device)
        with amp:
            logits = model(xb[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), xb[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with amp:
                vloss = window_loss(model, valid_ids, args.context, device)
            log.append({"step": step, "train_loss": round(loss.item(), 4), "valid_loss": round(vloss, 4),
                        "valid_ppl": round(math.exp(vloss), 3), "seconds": round(time.time() - t0, 1)})
            tqdm.write(json.dumps(log[-1]))
            if vloss < best:
                best = vloss
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # fp16 keeps the checkpoint small; loaders upcast to float32.
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {
        "command": "python -m accllm.quant.train_tiny " + " ".join(args.argv),
        "parameters": n_params,
        "trained_context": args.context,
        "train_tokens": len(train_ids),
        "best_valid_ppl": round(math.exp(best), 3),
        "log": log,
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out} (best valid ppl {math.exp(best):.2f})")
    return summary


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    import sys

    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
