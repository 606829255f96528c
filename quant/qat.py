"""Quantisation-aware distillation: the compressed (Brevitas fake-quant) model learns to match the
float model's next-token distribution (KL on logits) on "train"-split windows; pruned weights stay zero.

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


def distill(student, teacher, train_ids, settings, masks, device, progress: bool = True) -> list[float]:
    """``settings.qat_steps`` AdamW steps on random ``settings.calib_seqlen``-token windows of ``train_ids``."""
    if teacher is None:
        raise ValueError("quantisation-aware fine-tuning needs the float model as teacher")
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.qat_lr, weight_decay=0.0)
    steps = settings.qat_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    g = torch.Generator().manual_seed(settings.seed)
    n, batch = settings.calib_seqlen, settings.qat_batch
    t0 = time.time()
    losses = []
    student.train()
    bar = tqdm(range(steps), desc="qat distill", disable=not progress)
    for step in bar:
        starts = torch.randint(0, len(train_ids) - n, (batch,), generator=g).tolist()
        x = torch.stack([train_ids[s:s + n] for s in starts]).to(device)
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
