// The control kernel's memory side: every m_axi port carries whole words of ACCLLM_WORD_BITS (>= 256) bits, read
// and written in sequential, pipelined loops so Vitis HLS infers bursts (UG1399 "AXI Burst Transfers": one
// sequential access per iteration of a pipelined loop; "Automatic Port Width Resizing": an ap_uint port is as
// wide as its type, no widening needed). Sub-word fields (fp16, float32, int32, KV bytes) are lanes of the words.
#ifndef ACCLLM_MEM_H
#define ACCLLM_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <cstring>

#include "ap_int.h"
#include "hls_stream.h"

#ifndef ACCLLM_WORD_BITS
#define ACCLLM_WORD_BITS 512
#endif

namespace accllm {

typedef ap_uint<ACCLLM_WORD_BITS> word_t;
static const unsigned WORD_BYTES = ACCLLM_WORD_BITS / 8;
static const unsigned WORD_U32 = ACCLLM_WORD_BITS / 32;
// Loop trip-count bounds for run-time section lengths (LOOP_TRIPCOUNT is a report hint, not a limit).
static const unsigned MAX_SECTION_WORDS = 1u << 20;

// 32-bit lane i of a word. In C simulation the 64-bit limbs of ap_types' model are read directly (wide range
// selects dominate C-simulation time otherwise); synthesis sees the range select.
inline uint32_t word_u32(const word_t &w, unsigned i) {
#ifndef __SYNTHESIS__
    return (uint32_t)(w.V.get_pVal(i / 2) >> (32 * (i & 1)));
#else
    return w.range(32 * i + 31, 32 * i).to_uint();
#endif
}

inline void set_word_u32(word_t &w, unsigned i, uint32_t v) {
#ifndef __SYNTHESIS__
    uint64_t limb = w.V.get_pVal(i / 2);
    const unsigned sh = 32 * (i & 1);
    limb = (limb & ~((uint64_t)0xFFFFFFFFu << sh)) | ((uint64_t)v << sh);
    w.V.set_pVal(i / 2, limb);
#else
    w.range(32 * i + 31, 32 * i) = v;
#endif
}

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline void lane_to(uint32_t v, uint32_t &o) { o = v; }
inline void lane_to(uint32_t v, float &o) { o = bits_to_float(v); }
inline void lane_to(uint32_t v, uint16_t &o) { o = (uint16_t)v; }
inline void lane_to(uint32_t v, uint8_t &o) { o = (uint8_t)v; }

// n values of T (uint8/uint16/uint32/float) at byte offset off (a multiple of sizeof(T)): one burst over the words
// that hold them, each word cut into WORD_BYTES / sizeof(T) lanes.
template <class T> inline void load_lanes(const word_t *mem, size_t off, unsigned n, T *out) {
    const unsigned B = sizeof(T), per = WORD_BYTES / B;
    const size_t w0 = off / WORD_BYTES;
    const unsigned first = (unsigned)(off % WORD_BYTES) / B, nw = (first + n + per - 1) / per;
    for (unsigned i = 0; i < nw; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 64
        const word_t w = mem[w0 + i];
        for (unsigned j = 0; j < per; j++) {
            const long idx = (long)(i * per + j) - (long)first;
            if (idx >= 0 && idx < (long)n) lane_to(word_u32(w, j * B / 4) >> (8 * B * (j % (4 / B))), out[idx]);
        }
    }
}

inline uint32_t lane_bits(uint32_t v) { return v; }
inline uint32_t lane_bits(int32_t v) { return (uint32_t)v; }
inline uint32_t lane_bits(uint8_t v) { return v; }

// n values of T (uint8/uint32/int32) at byte offset off (a multiple of sizeof(T)), the store twin of load_lanes:
// one burst over the words that hold them; the words at either end keep their other lanes (read, merge, write).
template <class T> inline void store_lanes(word_t *mem, size_t off, unsigned n, const T *in) {
    const unsigned B = sizeof(T), per = WORD_BYTES / B;
    const uint32_t mask = B == 4 ? 0xFFFFFFFFu : (1u << (8 * B)) - 1;
    const size_t w0 = off / WORD_BYTES;
    const unsigned first = (unsigned)(off % WORD_BYTES) / B, nw = (first + n + per - 1) / per;
    for (unsigned i = 0; i < nw; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 4096
        const bool edge = i == 0 || i == nw - 1;
        word_t w = edge ? mem[w0 + i] : word_t(0);
        for (unsigned j = 0; j < per; j++) {
            const long idx = (long)(i * per + j) - (long)first;
            if (idx < 0 || idx >= (long)n) continue;
            const unsigned u = j * B / 4, sh = 8 * B * (j % (4 / B));
            set_word_u32(w, u, (word_u32(w, u) & ~(mask << sh)) | ((lane_bits(in[idx]) & mask) << sh));
        }
        mem[w0 + i] = w;
    }
}

// n 32-bit values at 32-bit index idx (trace and top-K regions are indexed in 32-bit units).
inline void store_u32(word_t *mem, size_t idx, unsigned n, const uint32_t *in) { store_lanes(mem, 4 * idx, n, in); }

inline void store_i32(word_t *mem, size_t idx, unsigned n, const int32_t *in) { store_lanes(mem, 4 * idx, n, in); }

// ---------------------------------------------------------------- weight-stream sections

// The words of one section, in order: a sequential read in a pipelined loop, i.e. one AXI burst per section
// (split by the m_axi adapter at max_read_burst_length), feeding the record unpacker through an hls::stream.
inline void read_words(const word_t *mem, size_t off, unsigned nwords, hls::stream<word_t> &out) {
    const size_t w0 = off / WORD_BYTES;
    for (unsigned i = 0; i < nwords; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_SECTION_WORDS
        out.write(mem[w0 + i]);
    }
}

// Words a section of `bits` stream bits starting at byte offset off occupies.
inline unsigned section_words(size_t off, uint64_t bits) {
    return (unsigned)(((off % WORD_BYTES) * 8 + bits + ACCLLM_WORD_BITS - 1) / ACCLLM_WORD_BITS);
}

// Bit buffer over a word stream: fields LSB first (accllm.sim.weight_stream), refilled 32 bits at a time, so a
// field never straddles more than the buffer holds. take(w) for w <= 32.
struct bit_reader {
    hls::stream<word_t> &in;
    word_t cur;
    unsigned lane;   // next 32-bit lane of cur
    uint64_t buf;    // low `nbits` bits are the next stream bits
    unsigned nbits;

    bit_reader(hls::stream<word_t> &s, size_t off) : in(s), cur(0), lane(WORD_U32), buf(0), nbits(0) {
        skip((unsigned)(off % WORD_BYTES) * 8);
    }
    unsigned take(unsigned w) {
        if (nbits < w) {
            if (lane == WORD_U32) { cur = in.read(); lane = 0; }
            buf |= (uint64_t)word_u32(cur, lane++) << nbits;
            nbits += 32;
        }
        const unsigned v = (unsigned)(buf & (((uint64_t)1 << w) - 1));
        buf >>= w;
        nbits -= w;
        return v;
    }
    void skip(unsigned bits) {
        for (unsigned i = 0; i < bits / 32; i++) {
#pragma HLS LOOP_TRIPCOUNT min = 0 max = WORD_U32
            take(32);
        }
        take(bits % 32);
    }
};

}  // namespace accllm

#endif
