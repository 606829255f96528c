// C simulation model of the RTL core behind the HLS blackbox: consumes one A and one B beat per step, as the
// RTL does, and closes an accumulation every GROUP inputs (W2 modes) and at the B beat's tlast.
#include "accllm_core_hls_bb.h"

void accllm_core_hls_bb(hls::stream<accllm_a_t> &a, hls::stream<accllm_b_t> &b, hls::stream<accllm_acc_t> &acc,
                        ap_uint<2> mode, ap_uint<32> n_out) {
    const int L = ACCLLM_LANES;
    const unsigned md = mode.to_uint();
    const int group_beats = (md == 1) ? ACCLLM_GROUP / (2 * L) : ACCLLM_GROUP / L;
    int32_t sum = 0;
    int beat_in_group = 0;
    uint8_t ab[2 * L], bb[L];
    for (unsigned produced = 0; produced < (unsigned)n_out;) {
        accllm_a_t av = a.read();
        accllm_b_t bv = b.read();
        accllm_get_bytes(av, ab, md == 1 ? 2 * L : L);  // only SPARSE uses the upper half
        accllm_get_bytes(bv, bb, L);
        const bool last = bv[8 * L];
        // One lane loop per mode (the mode is fixed for the operation): same products, faster C simulation.
        if (md == 0) {  // DENSE: lane l = input l
            const int zero = bb[L / 4];
            for (int l = 0; l < L; l++) sum += (int8_t)ab[l] * (((bb[l / 4] >> (2 * (l % 4))) & 3) - zero);
        } else if (md == 1) {  // SPARSE: lanes 2j, 2j+1 pick from block j of four inputs
            const int zero = bb[L / 2];
            for (int l = 0; l < L; l++) {
                const int pos = (bb[L / 4 + l / 4] >> (2 * (l % 4))) & 3;
                sum += (int8_t)ab[4 * (l / 2) + pos] * (((bb[l / 4] >> (2 * (l % 4))) & 3) - zero);
            }
        } else if (md == 2) {  // QK: key codes, one zero point per token
            const int zero = bb[L / 2];
            for (int l = 0; l < L; l++) sum += (int8_t)ab[l] * (((bb[l / 2] >> (4 * (l % 2))) & 15) - zero);
        } else {  // PV: value codes, a zero point per lane (token)
            for (int l = 0; l < L; l++)
                sum += (int8_t)ab[l] * (((bb[l / 2] >> (4 * (l % 2))) & 15) - ((bb[L / 2 + l / 2] >> (4 * (l % 2))) & 15));
        }
        beat_in_group++;
        if (last || (md <= 1 && beat_in_group == group_beats)) {
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
