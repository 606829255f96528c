// C simulation model of the RTL core behind the HLS blackbox: consumes one A and one B beat per step, as the
// RTL does, and closes an accumulation every GROUP inputs (W2 modes) and at the B beat's tlast.
#include "accllm_core_hls_bb.h"

static const int L = ACCLLM_LANES;

void accllm_core_hls_bb(hls::stream<accllm_a_t> &a, hls::stream<accllm_b_t> &b, hls::stream<accllm_acc_t> &acc,
                        ap_uint<2> mode, ap_uint<32> n_out) {
    const int group_beats = (mode == 1) ? ACCLLM_GROUP / (2 * L) : ACCLLM_GROUP / L;
    ap_int<32> sum = 0;
    int beat_in_group = 0;
    for (unsigned produced = 0; produced < (unsigned)n_out;) {
        accllm_a_t av = a.read();
        accllm_b_t bv = b.read();
        bool last = bv[8 * L];
        for (int l = 0; l < L; l++) {
            int x, code, zero;
            if (mode == 0) {  // DENSE: lane l = input l
                x = (ap_int<8>)av.range(8 * l + 7, 8 * l);
                code = bv.range(2 * l + 1, 2 * l);
                zero = bv.range(2 * L + 7, 2 * L);
            } else if (mode == 1) {  // SPARSE: lanes 2j, 2j+1 pick from block j of four inputs
                int pos = bv.range(2 * L + 2 * l + 1, 2 * L + 2 * l);
                int in = 4 * (l / 2) + pos;
                x = (ap_int<8>)av.range(8 * in + 7, 8 * in);
                code = bv.range(2 * l + 1, 2 * l);
                zero = bv.range(4 * L + 7, 4 * L);
            } else if (mode == 2) {  // QK: key codes, one zero point per token
                x = (ap_int<8>)av.range(8 * l + 7, 8 * l);
                code = bv.range(4 * l + 3, 4 * l);
                zero = bv.range(4 * L + 7, 4 * L);
            } else {  // PV: value codes, a zero point per lane (token)
                x = (ap_int<8>)av.range(8 * l + 7, 8 * l);
                code = bv.range(4 * l + 3, 4 * l);
                zero = bv.range(4 * L + 4 * l + 3, 4 * L + 4 * l);
            }
            sum += x * (code - zero);
        }
        beat_in_group++;
        bool close = last || (mode <= 1 && beat_in_group == group_beats);
        if (close) {
            accllm_acc_t out;
            out.range(31, 0) = sum.range(31, 0);
            out[32] = last;
            acc.write(out);
            produced++;
            sum = 0;
            beat_in_group = 0;
        }
    }
}
