"""Quantisation-aware distillation: the compressed (Brevitas fake-quant) model learns to match the
float model's next-token distribution (KL on logits) on "train"-split windows and, optionally, on text the
teacher generated itself (data-free distillation as in LLM-QAT: start from BOS, sample to the full length),
half of each batch from each; pruned weights stay zero. Nothing of the held-out splits is ever used.

Brevitas' quantisers pass gradients straight through the rounding, and their group scales and zero
points (``parameter_from_stats``) are trained together with the weights.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from accllm.quant.prune import apply_masks


@torch.no_grad()
def teacher_generations(teacher, tokenizer, n: int, seqlen: int, seed: int = 0, progress: bool = True,
                        batch: int = 256) -> torch.Tensor:
    """``n`` sequences of ``seqlen`` tokens sampled from the teacher (temperature 1) after BOS, EOS held off until
    the full length: long [n, seqlen]."""
    device = next(teacher.parameters()).device
    torch.manual_seed(seed)
    out = []
    for i in tqdm(range(0, n, batch), desc="teacher generations", disable=not progress):
        b = min(batch, n - i)
        start = torch.full((b, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
        seq = teacher.generate(start, attention_mask=torch.ones_like(start), do_sample=True, temperature=1.0,
                               top_k=0, top_p=1.0, max_new_tokens=seqlen - 1, min_new_tokens=seqlen - 1,
                               pad_token_id=tokenizer.eos_token_id)
        out.append(seq[:, :seqlen].cpu())
    return torch.cat(out)


def distill(student, teacher, train_ids, settings, masks, device, progress: bool = True,
            generated: torch.Tensor | None = None) -> list[float]:
    """``settings.qat_steps`` AdamW steps on random ``settings.calib_seqlen``-token windows of ``train_ids``
    (half of each batch from ``generated`` rows when given)."""
    if teacher is None:
        raise ValueError("quantisation-aware fine-tuning needs the float model as teacher")
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.qat_lr, weight_decay=0.0)
    steps = settings.qat_steps
    t0 = time.time()

    def progress_fraction(i):  # cosine over the steps, or over qat_seconds when that ends first
        frac = i / steps
        if settings.qat_seconds:
            frac = max(frac, (time.time() - t0) / settings.qat_seconds)
        return min(frac, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * progress_fraction(i))))
    g = torch.Generator().manual_seed(settings.seed)
    n, batch = settings.calib_seqlen, settings.qat_batch
    losses = []
    student.train()
    bar = tqdm(range(steps), desc="qat distill", disable=not progress)
    for step in bar:
        n_gen = batch // 2 if generated is not None else 0
        starts = torch.randint(0, len(train_ids) - n, (batch - n_gen,), generator=g).tolist()
        rows = [train_ids[s:s + n] for s in starts]
        if n_gen:
            rows += list(generated[torch.randint(0, len(generated), (n_gen,), generator=g), :n])
        x = torch.stack(rows).to(device)
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
        s_logp = F.log_softmax(student(input_ids=x).logits.float(), -1)
        loss = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if masks:
            apply_masks(student, masks)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(kl=f"{loss.item():.4f}")
        if settings.qat_seconds and time.time() - t0 > settings.qat_seconds:
            break
    student.eval()
    return losses
