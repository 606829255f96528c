"""Quantisation-aware distillation: the compressed model learns to match the float model's next-token
distribution (KL on logits) on "train"-split windows and, optionally, on text the teacher generated itself
(data-free distillation as in LLM-QAT: start from BOS, sample to the full length), half of each batch from
each; pruned weights stay zero. Nothing of the held-out splits is ever used.

Training runs on a *twin* of the Brevitas model by default (``twin=True``): each Brevitas ``QuantLinear``
becomes a :class:`TwinLinear` and each attention quantiser a :class:`TwinQuant`, which compute the documented
fake-quant formulas of :mod:`accllm.quant.checkpoint` with straight-through rounding; Brevitas' learned group
scales are trained, its integer zero points stay fixed, the 2:4 masks stay fixed or are learned
(``settings.qat_learn_masks``, SR-STE), the embedding is frozen (a quantised LM head, untied, trains). The twin's
forward equals Brevitas' in float32 (``tests/test_qat_twin.py``). After training the weights and scales are written
back into the Brevitas modules (:func:`write_back`), so evaluation, the
checkpoint and export still go through Brevitas. Why a twin: with Brevitas in the loop a step of SmolLM2-135M
(batch 16 x 256) made 55,000 kernel launches from 157,000 aten calls (QuantTensor bookkeeping and
dependency-injected quantisers per linear, per pass), 1.65 s of CPU for 0.27 s of GPU work: 0.84 steps/s on an
H200. The twin's formulas are a few elementwise kernels each, run under bf16 autocast with a fused AdamW at a
batch that keeps the GPU busier (``bench/quality.py --stages speed``). ``twin=False`` trains the Brevitas model
itself (float32), the reference the speed is measured against.
"""
from __future__ import annotations

import copy
import math
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from accllm.quant.checkpoint import ACT_MIN_SCALE
from accllm.quant.prune import apply_masks, decoder_linears, mask_2to4


@torch.no_grad()
def teacher_generations(teacher, tokenizer, n: int, seqlen: int, seed: int = 0, progress: bool = True,
                        batch: int = 256) -> torch.Tensor:
    """``n`` sequences of ``seqlen`` tokens sampled from the teacher (temperature 1) after BOS, EOS held off until
    the full length: long [n, seqlen]. On a GPU the teacher samples in bf16 (a copy)."""
    device = next(teacher.parameters()).device
    if device.type == "cuda":
        teacher = copy.deepcopy(teacher).to(torch.bfloat16)
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


# ---------------------------------------------------------------- the twin's formulas (straight-through rounding)

def _round_ste(x):
    return x + (torch.round(x) - x).detach()


def twin_weight(w, scale, zero, levels: int, group: int, mask):
    """Group-wise asymmetric fake-quant weight [out, in] (``fake_quant_weight``'s formula), times the 2:4 mask."""
    out_f, in_f = w.shape
    n = scale.shape[1]
    wg = F.pad(w, (0, n * group - in_f)).view(out_f, n, group)
    s, z = scale[:, :, None], zero[:, :, None]
    q = torch.clamp(_round_ste(wg / s + z), 0, levels)
    wq = ((q - z) * s).view(out_f, -1)[:, :in_f]
    return wq if mask is None else wq * mask


def twin_act(x, dim: int = -1):
    """Int8 symmetric per-row fake-quant over ``dim`` (``fake_quant_act``'s formula): (value, scale)."""
    xf = x.float()
    s = (torch.clamp(xf.abs().amax(dim, keepdim=True), min=ACT_MIN_SCALE) / 128).detach()
    return torch.clamp(_round_ste(xf / s), -128, 127) * s, s


def twin_kv(x, dim: int = -2, bits: int = 4):
    """Asymmetric per-row fake-quant over ``dim`` (``fake_quant_kv``'s formula): (value, scale)."""
    xf = x.float()
    levels = 2 ** bits - 1
    lo = torch.clamp(xf.amin(dim, keepdim=True), max=0)
    hi = torch.clamp(xf.amax(dim, keepdim=True), min=0)
    s = (torch.clamp(hi - lo, min=ACT_MIN_SCALE) / levels).detach()
    z = torch.clamp(torch.round(-lo / s), 0, levels).detach()
    return (torch.clamp(_round_ste(xf / s + z), 0, levels) - z) * s, s


KERNELS = {"weight": twin_weight, "act": twin_act, "kv": twin_kv}  # looked up at call time (swappable)
# Per-step shrink of pruned shadow weights when masks are learned. Constant while the learning rate decays, so a
# pruned weight's balance point (Adam step / MASK_DECAY, about 0.1 at lr 1e-4) falls with it and the masks settle.
MASK_DECAY = 1e-3


class QuantOut(NamedTuple):
    """What the attention reads from a quantiser (Brevitas' QuantTensor has the same two fields)."""
    value: torch.Tensor
    scale: torch.Tensor


class TwinLinear(nn.Module):
    """Training stand-in for a Brevitas ``QuantLinear``: int8 per-token input, group-wise weights.

    ``learn_mask``: the 2:4 mask is re-chosen at every step from the dense shadow weights (the two largest
    magnitudes of each four inputs) and the gradient passes straight through it, so a pruned weight that the loss
    wants can grow and take its block's place (SR-STE, Zhou et al. 2021); :meth:`decay_pruned` pulls the pruned
    shadows back towards zero, which keeps the mask from flipping back and forth."""

    def __init__(self, mod, learn_mask: bool = False):
        super().__init__()
        self.weight = nn.Parameter(mod.weight.detach().float().clone())
        self.bias = None if mod.bias is None else nn.Parameter(mod.bias.detach().float().clone())
        wq = getattr(mod, "weight_quant", None)
        self.scale = self.levels = self.group = None
        if wq is not None and wq.is_quant_enabled:
            qw = mod.quant_weight()
            self.scale = nn.Parameter(qw.scale_.detach().float().squeeze(-1).clone())
            self.register_buffer("zero", qw.zero_point_.detach().float().squeeze(-1).clone())
            self.levels, self.group = 2 ** int(qw.bit_width) - 1, int(qw.value_.shape[-1])
        mask = getattr(mod, "sparse_mask", None)
        self.register_buffer("mask", None if mask is None else mask.to(self.weight.device, torch.float32))
        iq = getattr(mod, "input_quant", None)
        self.act = iq is not None and iq.is_quant_enabled
        self.learn_mask = learn_mask and self.mask is not None

    def current_mask(self):
        """The 2:4 mask in force: the fixed one, or the one the shadow weights choose now."""
        if not self.learn_mask:
            return self.mask
        return mask_2to4(self.weight.detach().abs()).to(self.weight.dtype)

    def quant_weight(self):
        fixed = None if self.learn_mask else self.mask
        if self.scale is None:
            w = self.weight if fixed is None else self.weight * fixed
        else:
            w = KERNELS["weight"](self.weight, self.scale, self.zero, self.levels, self.group, fixed)
        if self.learn_mask:  # masked forward, unmasked (straight-through) backward
            w = w + (w * self.current_mask() - w).detach()
        return w

    @torch.no_grad()
    def decay_pruned(self, rate: float) -> None:
        if self.learn_mask and rate:
            self.weight.mul_(1 - rate * (1 - self.current_mask()))

    def forward(self, x):
        if self.act:
            x = KERNELS["act"](x)[0]
        return F.linear(x, self.quant_weight(), self.bias)


class TwinQuant(nn.Module):
    """Training stand-in for an attention ``QuantIdentity``: "act" = int8 per row over the last dim (Q, P);
    "kv" = asymmetric ``bits`` per row over dim -2 (K and V arrive transposed, [B, H, D, T])."""

    def __init__(self, kind: str, bits: int = 8):
        super().__init__()
        self.kind, self.bits = kind, bits

    def forward(self, x):
        if self.kind == "act":
            v, s = KERNELS["act"](x, -1)
        else:
            v, s = KERNELS["kv"](x, -2, self.bits)
        return QuantOut(v.to(x.dtype), s)


def _quant_enabled(q) -> bool:
    return q is not None and getattr(getattr(q, "act_quant", None), "is_quant_enabled", False)


def make_twin(model, kv_bits: int | None, learn_masks: bool = False) -> dict:
    """Swap the Brevitas modules of ``model`` for twins in place (``learn_masks``: see :class:`TwinLinear`);
    returns what :func:`write_back` needs."""
    from accllm.quant import attention as attn

    swapped = {"linears": {}, "sdpa": []}
    linears = dict(decoder_linears(model))
    head = getattr(model, "lm_head", None)
    if getattr(head, "weight_quant", None) is not None:  # a quantised (untied) LM head trains too
        linears["lm_head"] = head
    for name, mod in linears.items():
        parent, attr = name.rsplit(".", 1) if "." in name else ("", name)
        twin = TwinLinear(mod, learn_masks and name != "lm_head").to(mod.weight.device)
        setattr(model.get_submodule(parent), attr, twin)
        swapped["linears"][name] = (mod, twin)
    for m in attn.attention_modules(model):
        sd, old = m.sdpa, {}
        for attr in ("q_quant", "p_quant", "k_quant", "v_quant"):
            q = getattr(sd, attr)
            old[attr] = q
            if _quant_enabled(q):
                setattr(sd, attr, TwinQuant("act") if attr in ("q_quant", "p_quant") else TwinQuant("kv", kv_bits))
            elif q is not None:
                setattr(sd, attr, None)
        swapped["sdpa"].append((sd, old))
    return swapped


@torch.no_grad()
def write_back(model, swapped: dict) -> None:
    """Trained weights and scales into the Brevitas modules (zero points unchanged; a learned 2:4 mask replaces
    the module's ``sparse_mask``), which go back in place of the twins."""
    from accllm.quant.quantize import set_weight_quant_params

    for name, (mod, twin) in swapped["linears"].items():
        mask = twin.current_mask()
        w = twin.weight if mask is None else twin.weight * mask
        mod.weight.data.copy_(w.to(mod.weight.dtype))
        if twin.learn_mask:
            mod.register_buffer("sparse_mask", mask.bool().to(mod.weight.device), persistent=False)
        if twin.bias is not None:
            mod.bias.data.copy_(twin.bias.to(mod.bias.dtype))
        if twin.scale is not None:
            bits = int(math.log2(twin.levels + 1))
            set_weight_quant_params(mod, twin.scale.clamp(min=2.0 ** -24).cpu(), twin.zero.cpu(), bits)
        parent, attr = name.rsplit(".", 1) if "." in name else ("", name)
        setattr(model.get_submodule(parent), attr, mod)
    for sd, old in swapped["sdpa"]:
        for attr, q in old.items():
            setattr(sd, attr, q)


# ---------------------------------------------------------------- the loop

class DistillationDiverged(ValueError):
    """The distillation settings (``qat_lr``, ``qat_batch``) moved the student away from the teacher; a ValueError
    so the command line reports it in one line, as it does other bad settings."""


def check_converged(losses: list[float], settings) -> None:
    """Refuse a distillation that left the student further from the teacher than it started: a KL that is not
    finite, or whose mean over the last quarter of the steps exceeds the first step's (the student as it came).
    Too high a ``qat_lr`` for a small ``qat_batch`` does this (SmolLM2 at lr 1e-4, batch 16: the KL rose from 1.6
    to 63 and ended at 1.7), and the model written back would be worse than the post-training one."""
    advice = f"qat_lr (now {settings.qat_lr}) or raise qat_batch (now {settings.qat_batch})"
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        raise DistillationDiverged(f"distillation diverged: the KL is not finite from step {bad[0]} on; lower {advice}")
    if len(losses) < 10:
        return
    tail = losses[-max(5, len(losses) // 4):]
    end = sum(tail) / len(tail)
    if end > losses[0]:
        peak = max(range(len(losses)), key=losses.__getitem__)
        raise DistillationDiverged(
            f"distillation diverged: the KL to the teacher ended at {end:.3f} (mean of the last {len(tail)} steps), "
            f"above where it started ({losses[0]:.3f} at step 0); it peaked at {losses[peak]:.3f} at step {peak}. "
            f"Lower {advice}")


def distill(student, teacher, train_ids, settings, masks, device, progress: bool = True,
            generated: torch.Tensor | None = None, twin: bool = True, amp: bool | None = None,
            monitor=None, monitor_every: int = 0, train_scales: bool = True) -> list[float]:
    """AdamW steps (``settings.qat_steps``, or until ``settings.qat_seconds``) on random
    ``settings.calib_seqlen``-token windows of ``train_ids`` (half of each batch from ``generated`` rows when
    given), ``settings.qat_batch`` sequences a step. ``twin``: train the twin (see the module docstring) and
    write it back at the end (``train_scales``: its group scales train too); ``amp``: bf16 autocast (default: on
    a GPU with the twin). ``monitor(step, model)``
    is called every ``monitor_every`` steps (e.g. to log a perplexity curve). ``settings.qat_learn_masks``: the 2:4
    masks are learned (see :class:`TwinLinear`) and ``masks`` is updated in place to the final ones. Returns the KL
    of each step;
    ``student.accllm_distill_stats`` holds steps, seconds and tokens/s. A run that ends further from the teacher than
    it started raises :class:`DistillationDiverged` (:func:`check_converged`)."""
    if teacher is None:
        raise ValueError("quantisation-aware fine-tuning needs the float model as teacher")
    device = torch.device(device)
    amp = (twin and device.type == "cuda") if amp is None else amp
    teacher.eval()
    if amp:
        teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    learn = settings.qat_learn_masks and bool(masks)
    if learn and not twin:
        raise ValueError("learned 2:4 masks need the twin (twin=True)")
    swapped = make_twin(student, settings.kv_bits, learn) if twin else None
    if twin:
        for n, p in student.named_parameters():  # the embedding (a tied LM head too) frozen; the rest trains
            p.requires_grad_("embed_tokens" not in n and (train_scales or not n.endswith(".scale")))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.qat_lr, weight_decay=0.0, fused=device.type == "cuda")
    steps = settings.qat_steps
    warmup = max(1, min(100, steps // 20))
    t0 = time.time()

    def lr_factor(i):  # linear warm-up, then cosine over the steps, or over qat_seconds when that ends first
        frac = i / steps
        if settings.qat_seconds:
            frac = max(frac, (time.time() - t0) / settings.qat_seconds)
        return min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    g = torch.Generator().manual_seed(settings.seed)
    n, batch = settings.calib_seqlen, settings.qat_batch
    losses = []
    t_first = t0
    student.train()
    bar = tqdm(range(steps), desc="qat distill", disable=not progress)
    try:
        for step in bar:
            n_gen = batch // 2 if generated is not None else 0
            starts = torch.randint(0, len(train_ids) - n, (batch - n_gen,), generator=g).tolist()
            rows = [train_ids[s:s + n] for s in starts]
            if n_gen:
                rows += list(generated[torch.randint(0, len(generated), (n_gen,), generator=g), :n])
            x = torch.stack(rows).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                with torch.no_grad():
                    t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
                s_logp = F.log_softmax(student(input_ids=x).logits.float(), -1)
            loss = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean")
            del t_logp, s_logp
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if learn:
                for _, t in swapped["linears"].values():
                    t.decay_pruned(MASK_DECAY)
            if masks and not twin:  # the twin multiplies by its mask; Brevitas' float weights need re-zeroing
                apply_masks(student, masks)
            losses.append(loss.detach())
            if step == 0:  # the first step carries one-off costs (allocator, cuBLAS, autotuning): timed apart
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_first = time.time()
            if step % 50 == 0:
                bar.set_postfix(kl=f"{losses[-1].item():.4f}")
            if monitor is not None and monitor_every and (step + 1) % monitor_every == 0:
                student.eval()
                monitor(step + 1, student)
                student.train()
            if settings.qat_seconds and time.time() - t0 > settings.qat_seconds:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        seconds = time.time() - t0
        student.eval()
        if twin:
            write_back(student, swapped)
            if learn:  # the caller's masks are the ones the model now carries
                masks.update({n: m.sparse_mask.cpu() for n, m in decoder_linears(student).items() if n in masks})
            for p in student.parameters():
                p.requires_grad_(True)
        elif masks:
            apply_masks(student, masks)
    losses = [float(v) for v in torch.stack(losses).cpu()] if losses else []
    steady = max(t0 + seconds - t_first, 1e-9) if len(losses) > 1 else float("nan")
    student.accllm_distill_stats = {
        "steps": len(losses), "seconds": seconds, "steps_per_s": len(losses) / seconds,
        "steps_per_s_after_first": (len(losses) - 1) / steady, "tokens_per_s_after_first":
        (len(losses) - 1) * batch * n / steady, "batch": batch, "seqlen": n, "twin": twin, "amp": amp}
    check_converged(losses, settings)  # after the stats, so a refused run still carries them
    return losses
