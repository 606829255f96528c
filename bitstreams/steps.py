"""Flow step owned by bitstreams/: the board's build recipe (steps: see accllm.quant.steps)."""
from __future__ import annotations


def bitstream(ctx):
    """The board's build recipe files (the vendor tools run them; here they are only generated)."""
    from accllm.bitstreams.build import generate

    out = ctx.step_dir("bitstream")
    written = generate(ctx.artifacts["compile"], out, ctx.flow.board)
    return out, {"files": sorted(written)}
