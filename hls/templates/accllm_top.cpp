// accllm engine kernel top (Vitis HLS). One call runs n_tokens tokens at stream positions pos .. pos + n_tokens - 1:
// decode is n_tokens = 1 (matrix-vector), prefill runs the prompt in blocks of engine_cfg::block tokens, one weight
// pass per block (run_block). The top-K (and, with logits_en, the logits) are the last token's.
// Interfaces only here (hls4ml's rule): every m_axi port is ap_uint<ACCLLM_WORD_BITS> words (>= 256 bits), in a
// bundle of its own, so bitstreams/ maps each bundle to one memory bank; depths are the build's sizes in words
// (parameters.h). The trace port always exists; trace_en selects whether the kernel writes it (no null pointers):
// token t's trace at int32 index t * layers * trace_size, the LM head's region after the last token's.
// A run of n_tokens = 0 or more than engine_cfg::max_tokens (the tokens port's size) computes nothing: KV cache,
// logits and trace are left as they were and the top-K ids read 0xFFFFFFFF (no vocabulary has that id), which
// the host can tell from any real result; the host refuses such a run before starting the kernel.
#include "parameters.h"

using accllm::word_t;

extern "C" void accllm_top(const word_t *program, unsigned n_instr, const word_t *blob, word_t *kv,
                           const word_t *tokens, unsigned n_tokens, unsigned pos, word_t *topk, word_t *logits,
                           unsigned logits_en, word_t *trace, unsigned trace_en ACCLLM_ENG_PARAMS) {
#pragma HLS INTERFACE mode = m_axi port = program offset = slave bundle = gmem_program depth = ACCLLM_DEPTH_PROGRAM
#pragma HLS INTERFACE mode = m_axi port = blob offset = slave bundle = gmem_blob depth = ACCLLM_DEPTH_BLOB max_read_burst_length = 64 num_read_outstanding = 16
#pragma HLS INTERFACE mode = m_axi port = kv offset = slave bundle = gmem_kv depth = ACCLLM_DEPTH_KV
#pragma HLS INTERFACE mode = m_axi port = tokens offset = slave bundle = gmem_tokens depth = ACCLLM_DEPTH_TOKENS
#pragma HLS INTERFACE mode = m_axi port = topk offset = slave bundle = gmem_topk depth = ACCLLM_DEPTH_TOPK
#pragma HLS INTERFACE mode = m_axi port = logits offset = slave bundle = gmem_logits depth = ACCLLM_DEPTH_LOGITS
#pragma HLS INTERFACE mode = m_axi port = trace offset = slave bundle = gmem_trace depth = ACCLLM_DEPTH_TRACE
#pragma HLS INTERFACE mode = s_axilite port = n_instr bundle = control
#pragma HLS INTERFACE mode = s_axilite port = n_tokens bundle = control
#pragma HLS INTERFACE mode = s_axilite port = pos bundle = control
#pragma HLS INTERFACE mode = s_axilite port = logits_en bundle = control
#pragma HLS INTERFACE mode = s_axilite port = trace_en bundle = control
#pragma HLS INTERFACE mode = s_axilite port = return bundle = control
#ifdef ACCLLM_ENGINE_STREAM
    // the engine RTL kernel's streams (accllm.sim.engine_regs): commands and activations out, results per channel in
#pragma HLS INTERFACE mode = axis port = eng_cmd
#pragma HLS INTERFACE mode = axis port = eng_act
#pragma HLS INTERFACE mode = axis port = eng_res
#endif
    if (n_tokens == 0 || n_tokens > engine_cfg::max_tokens) {
        uint32_t none[engine_cfg::topk];
        for (unsigned k = 0; k < engine_cfg::topk; k++) none[k] = accllm::NONE;
        accllm::store_u32(topk, 0, engine_cfg::topk, none);
        return;
    }
    const size_t tr_stride = (size_t)engine_cfg::layers * engine_cfg::trace_size;
    for (unsigned t0 = 0; t0 < n_tokens; t0 += engine_cfg::block) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = ACCLLM_TC_BLOCKS
        const unsigned nt = n_tokens - t0 < engine_cfg::block ? n_tokens - t0 : engine_cfg::block;
        unsigned ids[engine_cfg::block];
        accllm::load_lanes(tokens, 4 * (size_t)t0, nt, ids);  // one burst: the block's ids
        accllm::run_block<engine_cfg>(program, n_instr, blob, kv, ids, nt, pos + t0, topk, logits, logits_en != 0,
                                      t0 + nt == n_tokens, trace, trace_en != 0, t0 * tr_stride ACCLLM_ENG_ARGS);
    }
}
