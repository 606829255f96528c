"""The flow's steps, in order: each names the function that runs it (in the folder that owns the work), the
flow-file keys it reads, and the earlier steps whose artifacts it consumes."""
from __future__ import annotations

from dataclasses import dataclass

# The package's folders, bottom to top: a folder imports only from itself and the folders before it
# (tests/test_layers.py enforces it), so a step's code is its own folder and every folder below.
LAYERS = ("quant", "sim", "hls", "hw", "bitstreams", "host")


@dataclass(frozen=True)
class Step:
    name: str
    run: str  # "module:function" taking a StepContext, returning (artifact path, metrics dict)
    reads: tuple[str, ...]  # flow-file sections the step depends on
    consumes: tuple[str, ...] = ()  # earlier steps whose artifacts it needs
    uses: tuple[str, ...] = ()  # earlier steps whose artifacts it takes when the flow has them
    verify: str | None = None  # "module:function" checking the artifact against the golden model


# The ordered steps. ``reads`` names flow-file sections or dotted keys; a step reruns when any of them,
# or the artifact of a step it consumes, changes.
STEPS: list[Step] = [
    Step("compress", "accllm.quant.steps:compress",
         ("model", "checkpoint", "checkpoint_sha256", "compression", "evaluation.perplexity_tokens"),
         verify="accllm.sim.steps:verify_compress"),
    Step("export", "accllm.hls.steps:export", (), ("compress",), verify="accllm.hls.steps:verify_export"),
    Step("compile", "accllm.hls.steps:compile", ("engine.lanes", "board"), ("export",),
         verify="accllm.hls.steps:verify_compile"),
    Step("csim", "accllm.hls.steps:csim", ("evaluation.prompts", "evaluation.max_new_tokens"), ("compile",),
         verify="accllm.hls.steps:verify_csim"),
    Step("rtlsim", "accllm.hw.steps:rtlsim", ("evaluation.prompts", "evaluation.max_new_tokens"), ("compile",),
         verify="accllm.hw.steps:verify_rtlsim"),
    # Yosys synthesis of the engine for the board's configuration; refuses one that does not fit (about a minute).
    Step("synth", "accllm.hw.steps:synth", ("engine", "board", "model", "compression.sparsity")),
    Step("perf", "accllm.sim.steps:perf", ("engine", "board"), ("compress",)),
    Step("bitstream", "accllm.bitstreams.steps:bitstream", ("board",), ("compile",)),
    Step("deploy", "accllm.host.steps:deploy", ("board",), ("compress", "compile"), uses=("bitstream",)),
]
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def step_layers(step: Step) -> tuple[str, ...]:
    """The folders whose code can change what ``step`` makes or how it is verified: up to the highest folder of
    its run and verify functions."""
    tops = [LAYERS.index(parts[1]) for f in (step.run, step.verify) if f
            for parts in [f.partition(":")[0].split(".")] if parts[0] == "accllm" and parts[1:2] and parts[1] in LAYERS]
    return LAYERS[:max(tops) + 1] if tops else ()
