"""2:4 semi-structured pruning of the decoder's linear layers with an activation-aware (Wanda) score.

Score of weight ``W[n, k]`` = ``|W[n, k]| * ||X[:, k]||_2`` over calibration tokens (``X`` = that
layer's input); in every block of four consecutive inputs along ``k`` the two lowest-scoring weights
of each output row are set to zero. Only the seven decoder projections (q, k, v, o, gate, up, down)
are pruned: the embedding is a table lookup (no multiply to skip) and ``lm_head`` is tied to it in the
bundled model and is the layer most sensitive to error, so both stay dense (as in Wanda/SparseGPT).
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_linears(model) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every decoder projection (plain or Brevitas QuantLinear)."""
    return {name: mod for name, mod in model.named_modules()
            if name.rsplit(".", 1)[-1] in DECODER_LINEARS and hasattr(mod, "weight")}


def mask_2to4(score: torch.Tensor) -> torch.Tensor:
    """Bool mask [out, in] keeping the two highest scores in each block of 4 along the input dim."""
    out_f, in_f = score.shape
    if in_f % 4:
        raise ValueError(f"2:4 pruning needs the input dimension to be a multiple of 4, got {in_f}")
    blocks = score.reshape(out_f, in_f // 4, 4)
    top = blocks.topk(2, dim=-1).indices
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(out_f, in_f)


def check_2to4(weight: torch.Tensor) -> int:
    """Number of blocks of four inputs with more than two non-zero weights (0 means valid 2:4)."""
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"input dimension {in_f} is not a multiple of 4")
    nz = (weight.reshape(out_f, in_f // 4, 4) != 0).sum(-1)
    return int((nz > 2).sum())


@torch.no_grad()
def input_norms(model, batches, progress: bool = True) -> dict[str, torch.Tensor]:
    """Squared L2 norm of each input feature of each decoder linear, summed over calibration tokens."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in decoder_linears(model).items():
        def hook(m, inp, out, name=name):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            s = (x * x).sum(0)
            sums[name] = sums[name] + s.to(sums[name].device) if name in sums else s
        hooks.append(mod.register_forward_hook(hook))
    try:
        device = next(model.parameters()).device
        for x in tqdm(batches, desc="wanda calibration", disable=not progress):
            model(input_ids=x.to(device))
    finally:
        for h in hooks:
            h.remove()
    return sums


@torch.no_grad()
def prune_2to4(model, batches, progress: bool = True) -> dict[str, torch.Tensor]:
    """Wanda 2:4 pruning in place; returns ``{layer name: bool mask [out, in]}`` (True = kept)."""
    norms = input_norms(model, batches, progress)
    masks = {}
    for name, mod in decoder_linears(model).items():
        w = mod.weight.data
        score = w.abs().float() * norms[name].to(w.device).sqrt()[None, :]
        mask = mask_2to4(score)
        w.mul_(mask.to(w.dtype))
        masks[name] = mask.cpu()
    return masks


def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (after a weight update such as GPTQ or a fine-tuning step)."""
    mods = decoder_linears(model)
    for name, mask in masks.items():
        w = mods[name].weight.data
        w.mul_(mask.to(device=w.device, dtype=w.dtype))
