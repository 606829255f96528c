// C++ face of the RTL integer core for Vitis HLS: the blackbox described by the generated blackbox.json.
//
// The kernel (accllm_kernel.h) calls accllm_core_hls_bb() once per core operation. Synthesis replaces the call
// by bitstreams/common/accllm_core_hls_bb.v (hw/rtl/accllm_core behind FIFO / ap_ctrl_chain ports); C simulation
// links either the C model accllm_core_hls_bb.cpp or the Verilated RTL (accllm.hls.cosim). Beat layouts:
// accllm.sim.core_stream (the one definition).
#ifndef ACCLLM_CORE_HLS_BB_H
#define ACCLLM_CORE_HLS_BB_H
#include <stdint.h>
#include <cstring>

#include "ap_int.h"
#include "hls_stream.h"

#ifndef ACCLLM_LANES
#define ACCLLM_LANES 16
#endif
#ifndef ACCLLM_GROUP
#define ACCLLM_GROUP 32
#endif

typedef ap_uint<16 * ACCLLM_LANES> accllm_a_t;      // A beat: int8 operands
typedef ap_uint<8 * ACCLLM_LANES + 1> accllm_b_t;   // B beat: {tlast, codes / positions / zero points}
typedef ap_uint<33> accllm_acc_t;                    // output: {tlast, int32 accumulator}

// mode: 0 DENSE, 1 SPARSE, 2 QK, 3 PV. n_out: accumulators the operation produces (the call returns after them).
void accllm_core_hls_bb(hls::stream<accllm_a_t> &a, hls::stream<accllm_b_t> &b, hls::stream<accllm_acc_t> &acc,
                        ap_uint<2> mode, ap_uint<32> n_out);

// Bytes <-> beat words, 64 bits at a time (byte i = bits [8i+7:8i]); nbytes <= the word's bytes. Loops run over the
// word's whole 64-bit limbs (a compile-time bound) and skip the ones past nbytes. In C simulation the 64-bit limbs of
// ap_types' model are read and written directly (wide shifts and range selects otherwise dominate C-simulation time);
// synthesis sees the range selects.
template <int W> void accllm_set_bytes(ap_uint<W> &w, const uint8_t *bytes, unsigned nbytes) {
#ifndef __SYNTHESIS__
    for (unsigned j = 0; j < (W + 63) / 64; j++) {  // every limb written: the bytes, zeros past nbytes
        uint64_t v = 0;
        if (8 * j < nbytes) std::memcpy(&v, bytes + 8 * j, nbytes - 8 * j < 8 ? nbytes - 8 * j : 8);  // little-endian
        w.V.set_pVal(j, v);
    }
#else
    w = 0;
    for (unsigned j = 0; j < (W + 63) / 64; j++) {
        if (8 * j >= nbytes) break;
        uint64_t v = 0;
        for (unsigned i = 0; i < 8; i++)
            if (8 * j + i < nbytes) v |= (uint64_t)bytes[8 * j + i] << (8 * i);
        const unsigned hi = 64 * j + 63 < W ? 64 * j + 63 : W - 1;
        w.range(hi, 64 * j) = v;
    }
#endif
}

// The signed 32-bit accumulator of an output word.
inline int32_t accllm_acc_value(const accllm_acc_t &w) { return (int32_t)(uint32_t)w.range(31, 0).to_uint(); }

// One B beat: L bytes of codes / positions / zero points, tlast on top.
inline accllm_b_t accllm_b_beat(const uint8_t *bytes, bool last) {
    accllm_b_t w;
    accllm_set_bytes(w, bytes, ACCLLM_LANES);
#ifndef __SYNTHESIS__
    w.V.set_pVal(ACCLLM_LANES / 8, w.V.get_pVal(ACCLLM_LANES / 8) | (uint64_t)last << (8 * ACCLLM_LANES % 64));
#else
    w[8 * ACCLLM_LANES] = last;
#endif
    return w;
}

template <int W> void accllm_get_bytes(const ap_uint<W> &w, uint8_t *bytes, unsigned nbytes) {
    for (unsigned j = 0; j < (W + 63) / 64; j++) {
        if (8 * j >= nbytes) break;
#ifndef __SYNTHESIS__
        const uint64_t v = w.V.get_pVal(j);
        std::memcpy(bytes + 8 * j, &v, nbytes - 8 * j < 8 ? nbytes - 8 * j : 8);  // little-endian host
#else
        const unsigned hi = 64 * j + 63 < W ? 64 * j + 63 : W - 1;
        const uint64_t v = w.range(hi, 64 * j).to_uint64();
        for (unsigned i = 0; i < 8; i++)
            if (8 * j + i < nbytes) bytes[8 * j + i] = (uint8_t)(v >> (8 * i));
#endif
    }
}
#endif
