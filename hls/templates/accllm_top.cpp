// accllm engine kernel top (Vitis HLS). One call runs the program once: one token at stream position pos.
// Interfaces only here (hls4ml's rule): every m_axi port is ap_uint<ACCLLM_WORD_BITS> words (>= 256 bits), in a
// bundle of its own, so bitstreams/ maps each bundle to one memory bank; depths are the build's sizes in words
// (parameters.h). The trace port always exists; trace_en selects whether the kernel writes it (no null pointers).
#include "parameters.h"

using accllm::word_t;

extern "C" void accllm_top(const word_t *program, unsigned n_instr, const word_t *blob, word_t *kv, unsigned token,
                           unsigned pos, word_t *topk, word_t *logits, unsigned logits_en, word_t *trace,
                           unsigned trace_en) {
#pragma HLS INTERFACE mode = m_axi port = program offset = slave bundle = gmem_program depth = ACCLLM_DEPTH_PROGRAM
#pragma HLS INTERFACE mode = m_axi port = blob offset = slave bundle = gmem_blob depth = ACCLLM_DEPTH_BLOB max_read_burst_length = 64 num_read_outstanding = 16
#pragma HLS INTERFACE mode = m_axi port = kv offset = slave bundle = gmem_kv depth = ACCLLM_DEPTH_KV
#pragma HLS INTERFACE mode = m_axi port = topk offset = slave bundle = gmem_topk depth = ACCLLM_DEPTH_TOPK
#pragma HLS INTERFACE mode = m_axi port = logits offset = slave bundle = gmem_logits depth = ACCLLM_DEPTH_LOGITS
#pragma HLS INTERFACE mode = m_axi port = trace offset = slave bundle = gmem_trace depth = ACCLLM_DEPTH_TRACE
#pragma HLS INTERFACE mode = s_axilite port = n_instr bundle = control
#pragma HLS INTERFACE mode = s_axilite port = token bundle = control
#pragma HLS INTERFACE mode = s_axilite port = pos bundle = control
#pragma HLS INTERFACE mode = s_axilite port = logits_en bundle = control
#pragma HLS INTERFACE mode = s_axilite port = trace_en bundle = control
#pragma HLS INTERFACE mode = s_axilite port = return bundle = control
    accllm::run_program<engine_cfg>(program, n_instr, blob, kv, token, pos, topk, logits, logits_en != 0, trace,
                                    trace_en != 0);
}
