"""2:4 semi-structured pruning of the decoder's linear layers: Wanda (mask from an activation-aware score) or
SparseGPT (mask and an error-compensating weight update from each layer's input Hessian).

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


HEAD = "lm_head"


def quant_linears(model) -> dict[str, nn.Module]:
    """``{name: module}`` of the linears whose weights are stored as codes: the decoder projections, and the LM head
    when it is quantised (a Brevitas QuantLinear: never pruned, dense)."""
    out = dict(decoder_linears(model))
    head = getattr(model, HEAD, None)
    if getattr(head, "weight_quant", None) is not None and head.weight_quant.is_quant_enabled:
        out[HEAD] = head
    return out


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
    device = next(model.parameters()).device

    def run():
        for x in tqdm(batches, desc="wanda calibration", disable=not progress):
            model(input_ids=x.to(device))

    return collect_input_norms(model, run)


@torch.no_grad()
def collect_input_norms(module, run) -> dict[str, torch.Tensor]:
    """:func:`input_norms` of the decoder linears in ``module`` (a model or one decoder layer) while ``run()``
    feeds it the calibration data."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in decoder_linears(module).items():
        def hook(m, inp, out, name=name):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            s = (x * x).sum(0)
            sums[name] = sums[name] + s.to(sums[name].device) if name in sums else s
        hooks.append(mod.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return sums


@torch.no_grad()
def prune_2to4(model, batches, progress: bool = True) -> dict[str, torch.Tensor]:
    """Wanda 2:4 pruning in place; returns ``{layer name: bool mask [out, in]}`` (True = kept)."""
    return wanda_prune(model, input_norms(model, batches, progress))


@torch.no_grad()
def wanda_prune(module, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wanda 2:4 masks of the decoder linears in ``module`` (a model or one decoder layer) from their input
    norms; the pruned weights are zeroed in place."""
    masks = {}
    for name, mod in decoder_linears(module).items():
        w = mod.weight.data
        score = w.abs().float() * norms[name].to(w.device).sqrt()[None, :]
        mask = mask_2to4(score)
        w.mul_(mask.to(w.dtype))
        masks[name] = mask.cpu()
    return masks


class _StopForward(Exception):
    pass


@torch.no_grad()
def _layer_hessians(model, layer_idx: int, batches):
    """``H = 2/n X^T X`` (float32) of the inputs of decoder layer ``layer_idx``'s linears, with the layers below as
    they are now (already pruned); the forward stops after that layer."""
    layer = model.model.layers[layer_idx]
    mods = {n: m for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in DECODER_LINEARS}
    hs: dict[str, torch.Tensor] = {}
    count = 0
    hooks = []
    for name, mod in mods.items():
        def hook(m, inp, out, name=name):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            h = x.T @ x
            hs[name] = hs[name] + h if name in hs else h
        hooks.append(mod.register_forward_hook(hook))

    def stop(m, inp, out):
        raise _StopForward

    hooks.append(layer.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        for x in batches:
            count += x.numel()
            try:
                model(input_ids=x.to(device))
            except _StopForward:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {n: h * (2.0 / count) for n, h in hs.items()}, mods


@torch.no_grad()
def sparsegpt_2to4_weight(w: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01, block: int = 128):
    """SparseGPT (Frantar & Alistarh 2023) at 2:4: columns are visited left to right; at the start of each block
    of four the two weights of each row with the least saliency ``w^2 / [H^-1]_jj^2`` are pruned, and every
    pruned weight's error is spread over the columns not yet visited through the inverse Hessian (OBS update).
    Returns ``(new weight, keep-mask)``."""
    W = w.detach().float().clone()
    H = hessian.clone()
    n = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d = torch.diag(Hinv1)
        for i in range(i2 - i1):
            if i % 4 == 0:
                sal = W1[:, i:i + 4] ** 2 / d[i:i + 4][None, :] ** 2
                low = sal.topk(2, dim=1, largest=False).indices
                pruned[:, i1 + i:i1 + i + 4].scatter_(1, low, True)
            col = W1[:, i]
            q = torch.where(pruned[:, i1 + i], torch.zeros_like(col), col)
            err = (col - q) / d[i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(w.dtype), ~pruned


@torch.no_grad()
def sparsegpt_prune_2to4(model, batches, progress: bool = True) -> dict[str, torch.Tensor]:
    """SparseGPT 2:4 pruning in place, decoder layer by decoder layer (each layer's Hessians are taken with
    the layers below already pruned); returns ``{layer name: bool mask [out, in]}`` (True = kept)."""
    masks = {}
    layers = model.model.layers
    for i in tqdm(range(len(layers)), desc="sparsegpt 2:4", disable=not progress):
        hs, mods = _layer_hessians(model, i, batches)
        for name, mod in mods.items():
            w, mask = sparsegpt_2to4_weight(mod.weight.data, hs[name])
            mod.weight.data.copy_(w)
            masks[f"model.layers.{i}.{name}"] = mask.cpu()
    return masks


def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (after a weight update such as GPTQ or a fine-tuning step)."""
    mods = decoder_linears(model)
    for name, mask in masks.items():
        w = mods[name].weight.data
        w.mul_(mask.to(device=w.device, dtype=w.dtype))
