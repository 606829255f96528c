// accllm engine kernel top (Vitis HLS). One call runs the program once: one token at stream position pos.
#include "parameters.h"

extern "C" void accllm_top(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                           unsigned token, unsigned pos, float *logits, int32_t *trace, unsigned trace_en) {
#pragma HLS INTERFACE m_axi port = program offset = slave bundle = gmem0 depth = 4096
#pragma HLS INTERFACE m_axi port = blob offset = slave bundle = gmem1 depth = 1048576
#pragma HLS INTERFACE m_axi port = kv offset = slave bundle = gmem2 depth = 65536
#pragma HLS INTERFACE m_axi port = logits offset = slave bundle = gmem3 depth = 4096
#pragma HLS INTERFACE m_axi port = trace offset = slave bundle = gmem3 depth = 4096
#pragma HLS INTERFACE s_axilite port = n_instr bundle = control
#pragma HLS INTERFACE s_axilite port = token bundle = control
#pragma HLS INTERFACE s_axilite port = pos bundle = control
#pragma HLS INTERFACE s_axilite port = trace_en bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    accllm::run_program<engine_cfg>(program, n_instr, blob, kv, token, pos, logits, trace, trace_en != 0);
}
