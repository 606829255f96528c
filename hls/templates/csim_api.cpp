// C-simulation entry points for ctypes (accllm.hls.csim): the kernel top compiled with g++ and ap_types.
#include "parameters.h"

extern "C" void accllm_top(const uint8_t *, unsigned, const uint8_t *, uint8_t *, unsigned, unsigned, float *,
                           int32_t *, unsigned);

extern "C" int accllm_csim_step(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                                unsigned token, unsigned pos, float *logits, int32_t *trace, unsigned trace_en) {
    accllm_top(program, n_instr, blob, kv, token, pos, logits, trace, trace_en);
    return 0;
}

// Prefill: n tokens at positions pos .. pos + n - 1, in blocks of engine_cfg::block (one weight pass each); the
// logits are the last token's; token t's trace (trace_en) at trace + t * layers * trace_size.
extern "C" int accllm_csim_prefill(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                                   const unsigned *tokens, unsigned n, unsigned pos, float *logits, int32_t *trace,
                                   unsigned trace_en) {
    const size_t tr_stride = (size_t)engine_cfg::layers * engine_cfg::trace_size;
    for (unsigned t0 = 0; t0 < n; t0 += engine_cfg::block) {
        const unsigned nt = n - t0 < engine_cfg::block ? n - t0 : engine_cfg::block;
        accllm::run_block<engine_cfg>(program, n_instr, blob, kv, tokens + t0, nt, pos + t0, logits, t0 + nt == n,
                                      trace_en ? trace + t0 * tr_stride : trace, trace_en != 0);
    }
    return 0;
}

extern "C" unsigned accllm_csim_trace_size() { return engine_cfg::trace_size; }
extern "C" unsigned accllm_csim_prefill_block() { return engine_cfg::block; }
extern "C" unsigned long long accllm_csim_weight_bytes() { return accllm::weight_bytes_read(); }
extern "C" void accllm_csim_clear_weight_bytes() { accllm::weight_bytes_read() = 0; }
