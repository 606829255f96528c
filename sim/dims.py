"""The engine's model dimensions (:class:`Dims`): one definition, torch-free, so the board
runtime (``pip install accllm[board]``) reads a compiled program without the compression toolchain.
The golden model (:mod:`accllm.sim.golden`) and the compiler import it from here."""
from __future__ import annotations

from dataclasses import dataclass

from accllm.sim.kv_layout import KVLayout


@dataclass(frozen=True)
class Dims:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    group: int
    sinks: int
    window: int
    sink_rotation: bool  # "cache" positions: sink keys scored with the query rotated at min(i, S+W-1)
    sparse: bool
    wbits: int = 2  # the decoder linears' weight code width (ENGINE_BITS); the LM head's is HEAD_WBITS

    @property
    def slots(self) -> int:
        return self.sinks + self.window

    def linear_shape(self, name: str) -> tuple[int, int]:
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}[name]

    def kv_layout(self) -> KVLayout:
        return KVLayout(self.layers, self.kv_heads, self.head_dim, self.sinks, self.window)

    def to_json(self) -> dict:
        return dict(self.__dict__)


# The bit widths the engine runs (W2A8KV4 or W4A8KV4: the weight code width is said per operation): the compiler,
# the golden model and the RTL core are built for them.
ENGINE_BITS = {"weight_bits": (2, 4), "act_bits": (8,), "kv_bits": (4,)}


def engine_bits_problem(settings) -> str | None:
    """Why the engine cannot run these bit widths (a ``CompressionSettings``-like object), or None."""
    for key, allowed in ENGINE_BITS.items():
        if getattr(settings, key) not in allowed:
            return (f"{key} is {getattr(settings, key)}: the engine runs W2A8KV4 or W4A8KV4 "
                    f"({key} {' or '.join(map(str, allowed))})")
    return None


def dims_from(config, settings) -> Dims:
    """Engine dimensions from a HF Llama config and :class:`~accllm.quant.quantize.CompressionSettings`."""
    if not settings.lambda_attention:
        raise ValueError("the engine needs a Λ attention policy (sinks + window); this checkpoint was compressed with --no-lambda")
    if engine_bits_problem(settings):
        raise ValueError(f"the engine runs W2A8KV4 or W4A8KV4; this checkpoint is "
                         f"W{settings.weight_bits}A{settings.act_bits}KV{settings.kv_bits}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE type {rope.get('rope_type')!r} is not supported by the engine (only 'default')")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Dims(vocab=config.vocab_size, hidden=config.hidden_size, layers=config.num_hidden_layers,
                heads=config.num_attention_heads, kv_heads=config.num_key_value_heads, head_dim=head_dim,
                intermediate=config.intermediate_size, eps=float(config.rms_norm_eps), group=settings.group_size,
                sinks=settings.sinks, window=settings.window, sink_rotation=settings.positions == "cache",
                sparse=settings.sparsity == "2:4", wbits=settings.weight_bits)
