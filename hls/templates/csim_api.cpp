// C-simulation entry point for ctypes (accllm.hls.csim): the kernel top compiled with g++ and ap_types.
#include "parameters.h"

extern "C" void accllm_top(const uint8_t *, unsigned, const uint8_t *, uint8_t *, unsigned, unsigned, float *,
                           int32_t *, unsigned);

extern "C" int accllm_csim_step(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                                unsigned token, unsigned pos, float *logits, int32_t *trace, unsigned trace_en) {
    accllm_top(program, n_instr, blob, kv, token, pos, logits, trace, trace_en);
    return 0;
}

extern "C" unsigned accllm_csim_trace_size() { return engine_cfg::trace_size; }
