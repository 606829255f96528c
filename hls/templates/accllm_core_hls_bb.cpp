// C simulation model of the RTL core behind the HLS blackbox: consumes one A and one B beat per step, as the
// RTL does, and closes an accumulation every GROUP inputs (W2 modes) and at the B beat's tlast.
#include "accllm_core_hls_bb.h"

void accllm_core_hls_bb(hls::stream<accllm_a_t> &a, hls::stream<accllm_b_t> &b, hls::stream<accllm_acc_t> &acc,
                        ap_uint<2> mode, ap_uint<32> n_out) {
    const int L = ACCLLM_LANES;
    const int group_beats = (mode == 1) ? ACCLLM_GROUP / (2 * L) : ACCLLM_GROUP / L;
    int32_t sum = 0;
    int beat_in_group = 0;
    uint8_t ab[2 * L], bb[L];
    for (unsigned produced = 0; produced < (unsigned)n_out;) {
        accllm_a_t av = a.read();
        accllm_b_t bv = b.read();
        accllm_get_bytes(av, ab, mode == 1 ? 2 * L : L);  // only SPARSE uses the upper half
        accllm_get_bytes(bv, bb, L);
        const bool last = bv[8 * L];
        for (int l = 0; l < L; l++) {
            int x, code, zero;
            if (mode == 0) {  // DENSE: lane l = input l
                x = (int8_t)ab[l];
                code = (bb[l / 4] >> (2 * (l % 4))) & 3;
                zero = bb[L / 4];
            } else if (mode == 1) {  // SPARSE: lanes 2j, 2j+1 pick from block j of four inputs
                const int pos = (bb[L / 4 + l / 4] >> (2 * (l % 4))) & 3;
                x = (int8_t)ab[4 * (l / 2) + pos];
                code = (bb[l / 4] >> (2 * (l % 4))) & 3;
                zero = bb[L / 2];
            } else if (mode == 2) {  // QK: key codes, one zero point per token
                x = (int8_t)ab[l];
                code = (bb[l / 2] >> (4 * (l % 2))) & 15;
                zero = bb[L / 2];
            } else {  // PV: value codes, a zero point per lane (token)
                x = (int8_t)ab[l];
                code = (bb[l / 2] >> (4 * (l % 2))) & 15;
                zero = (bb[L / 2 + l / 2] >> (4 * (l % 2))) & 15;
            }
            sum += x * (code - zero);
        }
        beat_in_group++;
        if (last || (mode <= 1 && beat_in_group == group_beats)) {
            accllm_acc_t out;
            out.range(31, 0) = (uint32_t)sum;
            out[32] = last;
            acc.write(out);
            produced++;
            sum = 0;
            beat_in_group = 0;
        }
    }
}
