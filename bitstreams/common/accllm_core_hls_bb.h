// C++ face of the RTL core for Vitis HLS (the blackbox described by the generated blackbox.json).
//
// The kernel calls accllm_core_hls_bb() once per core operation; synthesis replaces the call by
// bitstreams/common/accllm_core_hls_bb.v (hw/rtl/accllm_core behind FIFO / ap_ctrl_chain ports), C simulation
// runs the C model in accllm_core_hls_bb.cpp. Beat layouts: accllm.sim.core_stream (the one definition).
#pragma once
#include <ap_int.h>
#include <hls_stream.h>

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
