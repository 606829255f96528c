// accllm engine kernels: templated on a config struct (see the generated parameters.h), never generated.
// Arithmetic follows accllm.sim.golden (the golden model) operation for operation; every integer reduction runs
// on the RTL core (accllm_core_hls_bb.h) in the beat format of accllm.sim.core_stream. Compile without -ffast-math and with
// -ffp-contract=off: float results must be the IEEE results of exactly these operations.
#ifndef ACCLLM_KERNEL_H
#define ACCLLM_KERNEL_H

#include <cmath>
#include <cstdint>
#include <cstring>

#include "accllm_core_hls_bb.h"

namespace accllm {

enum Op { OP_END = 0, OP_EMBED, OP_RMSNORM, OP_LINEAR, OP_ATTENTION, OP_ADD, OP_SILU_MUL, OP_LMHEAD };
enum Mode { MODE_DENSE = 0, MODE_SPARSE = 1, MODE_QK = 2, MODE_PV = 3 };
static const unsigned NONE = 0xFFFFFFFFu;
static const unsigned NUM_BUFS = 9;

struct engine_config {
    typedef ap_int<8> act_t;       // int8 activations, queries, probabilities
    typedef ap_uint<2> wcode_t;    // W2 codes and zero points
    typedef ap_uint<4> kvcode_t;   // KV4 codes and zero points
    typedef ap_int<32> accum_t;    // core accumulator (cannot overflow for reductions <= 2^16)
    static constexpr float act_min_scale = 1e-4f;
};

inline uint32_t rd_u32(const uint8_t *p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24); }
inline float rd_f32(const uint8_t *p) { float f; std::memcpy(&f, p, 4); return f; }
inline void wr_f32(uint8_t *p, float f) { std::memcpy(p, &f, 4); }

inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {  // subnormal half -> normal float
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; std::memcpy(&f, &bits, 4);
    return f;
}

// ---------------------------------------------------------------- quantisers (accllm.quant.checkpoint)

// Per-row symmetric int8: s = max(absmax, 1e-4) / 128, a = clamp(round_half_even(x / s), -128, 127).
template <class CFG> float act_quant(const float *x, unsigned n, typename CFG::act_t *a) {
    float m = 0.0f;
    for (unsigned i = 0; i < n; i++) { float v = std::fabs(x[i]); if (v > m) m = v; }
    float s = std::fmax(m, CFG::act_min_scale) / 128.0f;
    for (unsigned i = 0; i < n; i++) {
        float r = std::nearbyint(x[i] / s);
        a[i] = (int)(r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r));
    }
    return s;
}

// Per-row asymmetric uint4: lo = min(min x, 0), hi = max(max x, 0), s = max(hi - lo, 1e-4) / 15,
// z = clamp(round(-lo / s), 0, 15), c = clamp(round(x / s + z), 0, 15).
template <class CFG> float kv_quant(const float *x, unsigned n, uint8_t *codes, uint8_t *zero) {
    float lo = x[0], hi = x[0];
    for (unsigned i = 1; i < n; i++) { if (x[i] < lo) lo = x[i]; if (x[i] > hi) hi = x[i]; }
    lo = std::fmin(lo, 0.0f); hi = std::fmax(hi, 0.0f);
    float s = std::fmax(hi - lo, CFG::act_min_scale) / 15.0f;
    float z = std::nearbyint(-lo / s);
    z = z < 0.0f ? 0.0f : (z > 15.0f ? 15.0f : z);
    for (unsigned i = 0; i < n; i++) {
        float c = std::nearbyint(x[i] / s + z);
        codes[i] = (uint8_t)(c < 0.0f ? 0.0f : (c > 15.0f ? 15.0f : c));
    }
    *zero = (uint8_t)z;
    return s;
}

// ---------------------------------------------------------------- non-linear units (float32, fixed order)

template <class CFG> void rmsnorm(const float *x, const float *w, float *y) {
    double ss = 0.0;
    for (unsigned i = 0; i < CFG::hidden; i++) ss += (double)x[i] * (double)x[i];
    float var = (float)(ss / CFG::hidden);
    float inv = (float)(1.0 / std::sqrt((double)var + CFG::eps));
    for (unsigned i = 0; i < CFG::hidden; i++) y[i] = (x[i] * inv) * w[i];
}

// HF rotate_half convention over one head of D values.
template <class CFG> void rope(const float *x, float *y, const float *inv_freq, unsigned pos) {
    const unsigned h = CFG::head_dim / 2;
    for (unsigned j = 0; j < h; j++) {
        double ang = (double)pos * (double)inv_freq[j];
        float c = (float)std::cos(ang), s = (float)std::sin(ang);
        float a = x[j], b = x[j + h];
        y[j] = a * c - b * s;
        y[j + h] = b * c + a * s;
    }
}

template <class CFG> void softmax(const float *s, float *p, unsigned n) {
    float m = s[0];
    for (unsigned t = 1; t < n; t++) if (s[t] > m) m = s[t];
    double sum = 0.0;
    for (unsigned t = 0; t < n; t++) { p[t] = (float)std::exp((double)(s[t] - m)); sum += (double)p[t]; }
    const float total = (float)sum;  // a reduction rounds once to float32 (accllm.sim.golden._seq_sum)
    for (unsigned t = 0; t < n; t++) p[t] = (float)((double)p[t] / (double)total);
}

template <class CFG> void silu_mul(float *g, const float *u, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        float sig = (float)(1.0 / (1.0 + std::exp(-(double)g[i])));
        g[i] = (g[i] * sig) * u[i];
    }
}

// ---------------------------------------------------------------- the integer core (RTL blackbox)

// Every integer reduction runs on the RTL core through accllm_core_hls_bb(): a feeder process writes its A and B
// beats (accllm.sim.core_stream), the core runs one operation, a drain process reads the accumulators. The three
// form a DATAFLOW region, so in hardware the beats stream through the core's FIFOs instead of being buffered.
template <class CFG> void check_core_build() {
    static_assert(CFG::lanes == ACCLLM_LANES, "parameters.h: LANES differs from the blackbox build (ACCLLM_LANES)");
    static_assert(CFG::group == ACCLLM_GROUP, "parameters.h: group differs from the blackbox build (ACCLLM_GROUP)");
}

// The weight stream (accllm.sim.weight_stream, one core: record (row, g) at bit (row * K/G + g) * R, fields LSB
// first): DENSE  [scale fp16 | zero 2b | G codes 2b];  SPARSE  [scale fp16 | zero 2b | G/2 kept codes 2b | G/4
// pattern indices 3b]. The kernel's core takes W2 B beats (accllm.sim.core_stream); dequantisation uses the
// records' fp16 scales (the only copy of the scales).
static const uint8_t WS_PATTERNS[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

inline unsigned ws_field(const uint8_t *p, size_t bit, unsigned width) {  // width <= 24
    const size_t byte = bit >> 3;
    const unsigned shift = bit & 7;
    uint32_t v = 0;
    for (unsigned i = 0; 8 * i < shift + width; i++) v |= (uint32_t)p[byte + i] << (8 * i);
    return (v >> shift) & ((1u << width) - 1);
}

inline size_t ws_record_bits(unsigned mode, unsigned group) {
    return mode == MODE_SPARSE ? 16 + 2 + group + 3 * group / 4 : 16 + 2 + 2 * group;
}

// Bytes of one linear's weight stream (n rows of k / group records).
inline uint64_t ws_linear_bytes(unsigned mode, unsigned group, unsigned n, unsigned k) {
    return ((uint64_t)n * (k / group) * ws_record_bits(mode, group) + 7) / 8;
}

// Weight bytes the kernel read from the blob since the counter was last cleared (C-simulation only; read through
// accllm_csim_weight_bytes): what prefill's block mode saves is measured, not computed.
inline uint64_t &weight_bytes_read() { static uint64_t n = 0; return n; }
inline void count_weight_bytes(uint64_t n) {
#ifndef __SYNTHESIS__
    weight_bytes_read() += n;
#endif
}

// W2 linear: A = the activation chunk (L inputs dense, 2L sparse) re-sent for every row, B = beats unpacked from
// the linear's weight-stream records.
template <class CFG> void feed_linear(const typename CFG::act_t *a, const uint8_t *stream, unsigned n, unsigned k,
                                     unsigned mode, hls::stream<accllm_a_t> &as, hls::stream<accllm_b_t> &bs) {
    const unsigned L = CFG::lanes, G = CFG::group, WB = 2, HEAD = 16 + WB;
    const bool sparse = mode == MODE_SPARSE;
    const unsigned per_beat = sparse ? 2 * L : L;
    const unsigned row_beats = k / per_beat, group_beats = G / per_beat, groups = k / G;
    const size_t rec_bits = ws_record_bits(mode, G);
    accllm_a_t a_words[CFG::max_vec / CFG::lanes];  // the row's A beats, packed once and re-sent for every row
    uint8_t ab[2 * CFG::lanes], bb[CFG::lanes];
    for (unsigned c = 0; c < row_beats; c++) {
        for (unsigned i = 0; i < per_beat; i++) ab[i] = (uint8_t)a[c * per_beat + i].range(7, 0).to_uint();
        accllm_set_bytes(a_words[c], ab, per_beat);
    }
    for (unsigned row = 0; row < n; row++) {
        for (unsigned g = 0; g < groups; g++) {
            const size_t base = ((size_t)row * groups + g) * rec_bits;
            const unsigned zero = ws_field(stream, base + 16, WB);
            for (unsigned c = 0; c < group_beats; c++) {
#pragma HLS PIPELINE II = 1
                for (unsigned j = 0; j < L; j++) bb[j] = 0;
                for (unsigned l = 0; l < L; l++) {
                    const unsigned code = ws_field(stream, base + HEAD + (size_t)(c * L + l) * WB, WB);
                    bb[l / 4] |= code << (2 * (l % 4));
                    if (sparse) {
                        const unsigned pat = ws_field(stream, base + HEAD + G * WB / 2 + 3 * (c * L / 2 + l / 2), 3);
                        bb[L / 4 + l / 4] |= WS_PATTERNS[pat < 6 ? pat : 5][l % 2] << (2 * (l % 4));
                    }
                }
                bb[sparse ? L / 2 : L / 4] = (uint8_t)zero;
                as.write(a_words[g * group_beats + c]);
                bs.write(accllm_b_beat(bb, g == groups - 1 && c == group_beats - 1));
            }
        }
    }
}

// Group-wise dequantisation with the records' fp16 scales: y[n] = float32(sum_g double(acc[n,g]) * double(s_w[n,g])) * s_x.
inline double dequant_term(int32_t acc, unsigned scale_fp16) { return (double)acc * (double)half_to_float(scale_fp16); }

template <class CFG> void dequant(hls::stream<accllm_acc_t> &in, const uint8_t *stream, unsigned mode, float sx,
                                  float *y, unsigned n, unsigned groups, int32_t *tr_acc) {
    const size_t rec_bits = ws_record_bits(mode, CFG::group);
    for (unsigned row = 0; row < n; row++) {
        double sum = 0.0;
        for (unsigned g = 0; g < groups; g++) {
#pragma HLS PIPELINE II = 1
            const int32_t acc = accllm_acc_value(in.read());
            if (tr_acc) tr_acc[row * groups + g] = acc;
            sum += dequant_term(acc, ws_field(stream, ((size_t)row * groups + g) * rec_bits, 16));
        }
        y[row] = (float)sum * sx;
    }
}

template <class CFG> void linear_dataflow(const typename CFG::act_t *a, float sx, const uint8_t *stream,
                                          float *y, unsigned n, unsigned k, unsigned mode, int32_t *tr_acc) {
#pragma HLS DATAFLOW
    check_core_build<CFG>();
    hls::stream<accllm_a_t> as("a_beats");
    hls::stream<accllm_b_t> bs("b_beats");
    hls::stream<accllm_acc_t> accs("accumulators");
#pragma HLS STREAM variable = as depth = 4
#pragma HLS STREAM variable = bs depth = 4
#pragma HLS STREAM variable = accs depth = 4
    feed_linear<CFG>(a, stream, n, k, mode, as, bs);
    accllm_core_hls_bb(as, bs, accs, mode, n * (k / CFG::group));
    dequant<CFG>(accs, stream, mode, sx, y, n, k / CFG::group, tr_acc);
}

#ifdef ACCLLM_ENGINE_LINEAR
// C/RTL co-simulation seam (accllm.hw.engine_native): linear ``linear`` of the engine image runs on the Verilated
// multi-channel engine, which reads its sections from modelled memory and returns, per row and group, the
// accumulator and the fp16 scale of the record it closed.
extern "C" void accllm_engine_linear(unsigned linear, unsigned mode, const int8_t *a, unsigned k, unsigned n,
                                     int32_t *acc, uint16_t *scale);

template <class CFG> void linear_on_engine(const typename CFG::act_t *a, float sx, unsigned linear, float *y,
                                           unsigned n, unsigned k, unsigned mode, int32_t *tr_acc) {
    const unsigned groups = k / CFG::group;
    static int8_t a8[CFG::max_vec];
    static int32_t acc[CFG::max_vec * (CFG::max_vec / CFG::group)];
    static uint16_t sc[CFG::max_vec * (CFG::max_vec / CFG::group)];
    for (unsigned i = 0; i < k; i++) a8[i] = (int8_t)a[i].to_int();
    accllm_engine_linear(linear, mode, a8, k, n, acc, sc);
    for (unsigned row = 0; row < n; row++) {
        double sum = 0.0;
        for (unsigned g = 0; g < groups; g++) {
            if (tr_acc) tr_acc[row * groups + g] = acc[row * groups + g];
            sum += dequant_term(acc[row * groups + g], sc[row * groups + g]);
        }
        y[row] = (float)sum * sx;
    }
}
#endif

template <class CFG> void linear(const float *x, float *y, const uint8_t *stream, unsigned linear_index, unsigned n,
                                 unsigned k, unsigned mode, int32_t *tr_act, int32_t *tr_acc) {
    typename CFG::act_t a[CFG::max_vec];
    float sx = act_quant<CFG>(x, k, a);
    if (tr_act) for (unsigned i = 0; i < k; i++) tr_act[i] = a[i].to_int();
    count_weight_bytes(ws_linear_bytes(mode, CFG::group, n, k));
#ifdef ACCLLM_ENGINE_LINEAR
    (void)stream;
    linear_on_engine<CFG>(a, sx, linear_index, y, n, k, mode, tr_acc);
#else
    (void)linear_index;
    linear_dataflow<CFG>(a, sx, stream, y, n, k, mode, tr_acc);
#endif
}

// ---------------------------------------------------------------- prefill: one weight pass for a block of tokens

// Matrix-matrix mode: each weight record is read and decoded once and multiplied against the activation vectors of
// up to CFG::block tokens held on chip, so a prompt of n tokens streams the weights ceil(n / block) times. The
// integers are the core's (sum over the group of a * (code - zero)) and the float steps those of linear(), token by
// token, so a block gives bit for bit the results of running its tokens one at a time.
template <class CFG> void decode_group(const uint8_t *stream, size_t base, unsigned mode, int8_t *w) {
    const unsigned G = CFG::group, WB = 2, HEAD = 16 + WB;
    const int zero = (int)ws_field(stream, base + 16, WB);
    for (unsigned i = 0; i < G; i++) w[i] = 0;
    if (mode == MODE_SPARSE) {  // kept code j sits at input 4 * (j / 2) + pattern[j / 2][j % 2] of the group
        for (unsigned j = 0; j < G / 2; j++) {
            const unsigned pat = ws_field(stream, base + HEAD + G * WB / 2 + 3 * (j / 2), 3);
            w[4 * (j / 2) + WS_PATTERNS[pat < 6 ? pat : 5][j % 2]] += (int)ws_field(stream, base + HEAD + j * WB, WB) - zero;
        }
    } else {
        for (unsigned i = 0; i < G; i++) w[i] = (int)ws_field(stream, base + HEAD + i * WB, WB) - zero;
    }
}

template <class CFG> void linear_block(float (*x)[CFG::max_vec], float (*y)[CFG::max_vec], unsigned nt,
                                       const uint8_t *stream, unsigned linear_index, unsigned n, unsigned k,
                                       unsigned mode, int32_t *tr_act, int32_t *tr_acc, size_t tr_stride) {
    static typename CFG::act_t a[CFG::block][CFG::max_vec];
    static int8_t a8[CFG::block][CFG::max_vec];
    float sx[CFG::block];
    for (unsigned t = 0; t < nt; t++) {
        sx[t] = act_quant<CFG>(x[t], k, a[t]);
        for (unsigned i = 0; i < k; i++) a8[t][i] = (int8_t)a[t][i].to_int();
        if (tr_act) for (unsigned i = 0; i < k; i++) tr_act[t * tr_stride + i] = a8[t][i];
    }
#ifdef ACCLLM_ENGINE_LINEAR
    // The engine RTL has no block mode yet: one engine pass per token.
    (void)stream;
    for (unsigned t = 0; t < nt; t++) {
        count_weight_bytes(ws_linear_bytes(mode, CFG::group, n, k));
        linear_on_engine<CFG>(a[t], sx[t], linear_index, y[t], n, k, mode, tr_acc ? tr_acc + t * tr_stride : 0);
    }
#else
    (void)linear_index;
    const unsigned G = CFG::group, groups = k / G;
    const size_t rec_bits = ws_record_bits(mode, G);
    count_weight_bytes(ws_linear_bytes(mode, G, n, k));
    int8_t w[CFG::group];
    double sum[CFG::block];
    for (unsigned row = 0; row < n; row++) {
        for (unsigned t = 0; t < nt; t++) sum[t] = 0.0;
        for (unsigned g = 0; g < groups; g++) {
            const size_t base = ((size_t)row * groups + g) * rec_bits;
            const unsigned scale = ws_field(stream, base, 16);
            decode_group<CFG>(stream, base, mode, w);
            for (unsigned t = 0; t < nt; t++) {
                const int8_t *at = a8[t] + g * G;
                int32_t acc = 0;
                for (unsigned i = 0; i < G; i++) acc += at[i] * w[i];
                if (tr_acc) tr_acc[t * tr_stride + row * groups + g] = acc;
                sum[t] += dequant_term(acc, scale);
            }
        }
        for (unsigned t = 0; t < nt; t++) y[t][row] = (float)sum[t] * sx[t];
    }
#endif
}

// ---------------------------------------------------------------- Λ attention with the KV4 cache

// Packed slot (accllm.sim.kv_layout): D/2 bytes of codes (even index low nibble), float32 scale, uint8 zero.
template <class CFG> uint8_t *kv_slot(uint8_t *kv, unsigned layer, unsigned tensor, unsigned head, unsigned slot) {
    const size_t slot_bytes = CFG::head_dim / 2 + 5;
    return kv + ((((size_t)layer * 2 + tensor) * CFG::kv_heads + head) * CFG::slots + slot) * slot_bytes;
}

template <class CFG> void kv_store(uint8_t *p, const uint8_t *codes, float s, uint8_t z) {
    for (unsigned i = 0; i < CFG::head_dim / 2; i++) p[i] = codes[2 * i] | (codes[2 * i + 1] << 4);
    wr_f32(p + CFG::head_dim / 2, s);
    p[CFG::head_dim / 2 + 4] = z;
}

template <class CFG> void kv_load(const uint8_t *p, uint8_t *codes, float *s, uint8_t *z) {
    for (unsigned i = 0; i < CFG::head_dim / 2; i++) { codes[2 * i] = p[i] & 15; codes[2 * i + 1] = p[i] >> 4; }
    *s = rd_f32(p + CFG::head_dim / 2);
    *z = p[CFG::head_dim / 2 + 4];
}

// QK, one head: a packet per key t, A = the query (the sink-rotated one for sink keys), B = k[t] codes + kz[t];
// D is padded to a multiple of L with q = 0 and code = kz (products exactly 0).
template <class CFG> void feed_qk(const typename CFG::act_t *q, const typename CFG::act_t *qs, unsigned sink_keys,
                                 const uint8_t (*kc)[CFG::head_dim], const uint8_t *kz, unsigned n,
                                 hls::stream<accllm_a_t> &as, hls::stream<accllm_b_t> &bs) {
    const unsigned L = CFG::lanes, D = CFG::head_dim, per = (D + L - 1) / L;
    uint8_t ab[CFG::lanes], bb[CFG::lanes];
    accllm_a_t qw[2][(CFG::head_dim + CFG::lanes - 1) / CFG::lanes];  // the query's A beats, packed once per head
    for (unsigned s = 0; s < 2; s++)
        for (unsigned c = 0; c < per; c++) {
            for (unsigned l = 0; l < L; l++) {
                const unsigned d = c * L + l;
                ab[l] = d < D ? (uint8_t)(s ? qs : q)[d].range(7, 0).to_uint() : 0;
            }
            accllm_set_bytes(qw[s][c], ab, L);
        }
    for (unsigned t = 0; t < n; t++) {
        for (unsigned c = 0; c < per; c++) {
#pragma HLS PIPELINE II = 1
            for (unsigned j = 0; j < L; j++) bb[j] = 0;
            for (unsigned l = 0; l < L; l++) {
                const unsigned d = c * L + l;
                bb[l / 2] |= (d < D ? kc[t][d] : kz[t]) << (4 * (l % 2));
            }
            bb[L / 2] = kz[t];
            as.write(qw[t < sink_keys][c]);
            bs.write(accllm_b_beat(bb, c == per - 1));
        }
    }
}

// PV, one head: a packet per output column d, A = the probabilities of L tokens, B = v[t, d] codes + vz[t] (one
// zero point per lane); T is padded to a multiple of L with p = 0, code = zero = 0.
template <class CFG> void feed_pv(const typename CFG::act_t *p, const uint8_t (*vc)[CFG::head_dim], const uint8_t *vz,
                                 unsigned n, hls::stream<accllm_a_t> &as, hls::stream<accllm_b_t> &bs) {
    const unsigned L = CFG::lanes, D = CFG::head_dim, per = (n + L - 1) / L;
    uint8_t ab[CFG::lanes], bb[CFG::lanes];
    accllm_a_t pw[(CFG::slots + CFG::lanes - 1) / CFG::lanes];  // the probabilities' A beats, packed once per head
    for (unsigned c = 0; c < per; c++) {
        for (unsigned l = 0; l < L; l++) {
            const unsigned t = c * L + l;
            ab[l] = t < n ? (uint8_t)p[t].range(7, 0).to_uint() : 0;
        }
        accllm_set_bytes(pw[c], ab, L);
    }
    for (unsigned d = 0; d < D; d++) {
        for (unsigned c = 0; c < per; c++) {
#pragma HLS PIPELINE II = 1
            for (unsigned j = 0; j < L; j++) bb[j] = 0;
            for (unsigned l = 0; l < L; l++) {
                const unsigned t = c * L + l;
                bb[l / 2] |= (t < n ? vc[t][d] : 0) << (4 * (l % 2));
                bb[L / 2 + l / 2] |= (t < n ? vz[t] : 0) << (4 * (l % 2));
            }
            as.write(pw[c]);
            bs.write(accllm_b_beat(bb, c == per - 1));
        }
    }
}

inline void drain(hls::stream<accllm_acc_t> &in, int32_t *acc, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
#pragma HLS PIPELINE II = 1
        acc[i] = accllm_acc_value(in.read());
    }
}

template <class CFG> void qk_dataflow(const typename CFG::act_t *q, const typename CFG::act_t *qs, unsigned sink_keys,
                                     const uint8_t (*kc)[CFG::head_dim], const uint8_t *kz, unsigned n, int32_t *acc) {
#pragma HLS DATAFLOW
    check_core_build<CFG>();
    hls::stream<accllm_a_t> as("qk_a");
    hls::stream<accllm_b_t> bs("qk_b");
    hls::stream<accllm_acc_t> os("qk_acc");
    feed_qk<CFG>(q, qs, sink_keys, kc, kz, n, as, bs);
    accllm_core_hls_bb(as, bs, os, MODE_QK, n);
    drain(os, acc, n);
}

template <class CFG> void pv_dataflow(const typename CFG::act_t *p, const uint8_t (*vc)[CFG::head_dim],
                                     const uint8_t *vz, unsigned n, int32_t *acc) {
#pragma HLS DATAFLOW
    check_core_build<CFG>();
    hls::stream<accllm_a_t> as("pv_a");
    hls::stream<accllm_b_t> bs("pv_b");
    hls::stream<accllm_acc_t> os("pv_acc");
    feed_pv<CFG>(p, vc, vz, n, as, bs);
    accllm_core_hls_bb(as, bs, os, MODE_PV, CFG::head_dim);
    drain(os, acc, CFG::head_dim);
}

template <class CFG> void attention(unsigned layer, unsigned pos, const float *q, const float *k, const float *v,
                                    float *out, uint8_t *kv, const float *inv_freq, int32_t *tr) {
    typedef typename CFG::act_t act_t;
    const unsigned D = CFG::head_dim, H = CFG::heads, KVH = CFG::kv_heads, S = CFG::slots, G = H / KVH;
    int32_t *tr_kc = 0, *tr_kz = 0, *tr_vc = 0, *tr_vz = 0, *tr_qa = 0, *tr_qs = 0, *tr_qk = 0, *tr_p = 0, *tr_pv = 0;
    if (tr) {  // field order of accllm.sim.golden.trace_fields, starting at k_code
        tr_kc = tr; tr_kz = tr_kc + KVH * D; tr_vc = tr_kz + KVH; tr_vz = tr_vc + KVH * D; tr_qa = tr_vz + KVH;
        tr_qs = tr_qa + H * D; tr_qk = tr_qs + H * D; tr_p = tr_qk + H * S; tr_pv = tr_p + H * S;
    }
    const unsigned slot = pos < CFG::sinks ? pos : CFG::sinks + (pos - CFG::sinks) % CFG::window;
    float rot[CFG::head_dim];
    uint8_t codes[CFG::head_dim], z;
    for (unsigned h = 0; h < KVH; h++) {
        rope<CFG>(k + h * D, rot, inv_freq, pos);
        float s = kv_quant<CFG>(rot, D, codes, &z);
        kv_store<CFG>(kv_slot<CFG>(kv, layer, 0, h, slot), codes, s, z);
        if (tr) { for (unsigned d = 0; d < D; d++) tr_kc[h * D + d] = codes[d]; tr_kz[h] = z; }
        s = kv_quant<CFG>(v + h * D, D, codes, &z);
        kv_store<CFG>(kv_slot<CFG>(kv, layer, 1, h, slot), codes, s, z);
        if (tr) { for (unsigned d = 0; d < D; d++) tr_vc[h * D + d] = codes[d]; tr_vz[h] = z; }
    }
    const unsigned n = pos + 1 < S ? pos + 1 : S;
    const bool sink_rot = CFG::sink_rotation && CFG::sinks > 0 && pos > S - 1;
    static act_t qa[CFG::heads][CFG::head_dim], qs[CFG::heads][CFG::head_dim];
    float sq[CFG::heads], sqs[CFG::heads];
    for (unsigned h = 0; h < H; h++) {
        rope<CFG>(q + h * D, rot, inv_freq, pos);
        sq[h] = act_quant<CFG>(rot, D, qa[h]);
        if (tr) for (unsigned d = 0; d < D; d++) tr_qa[h * D + d] = qa[h][d].to_int();
        if (sink_rot) {
            rope<CFG>(q + h * D, rot, inv_freq, S - 1);
            sqs[h] = act_quant<CFG>(rot, D, qs[h]);
            if (tr) for (unsigned d = 0; d < D; d++) tr_qs[h * D + d] = qs[h][d].to_int();
        }
    }
    static uint8_t kc[CFG::slots][CFG::head_dim], vc[CFG::slots][CFG::head_dim];
    float ks[CFG::slots], vs[CFG::slots], score[CFG::slots], p[CFG::slots];
    uint8_t kz[CFG::slots], vz[CFG::slots];
    act_t pa[CFG::slots];
    for (unsigned kvh = 0; kvh < KVH; kvh++) {
        for (unsigned t = 0; t < n; t++) {
            kv_load<CFG>(kv_slot<CFG>(kv, layer, 0, kvh, t), kc[t], &ks[t], &kz[t]);
            kv_load<CFG>(kv_slot<CFG>(kv, layer, 1, kvh, t), vc[t], &vs[t], &vz[t]);
        }
        for (unsigned h = kvh * G; h < (kvh + 1) * G; h++) {
            int32_t acc[CFG::slots > CFG::head_dim ? CFG::slots : CFG::head_dim];
            qk_dataflow<CFG>(qa[h], qs[h], sink_rot ? CFG::sinks : 0, kc, kz, n, acc);
            for (unsigned t = 0; t < n; t++) {
                const bool sink = sink_rot && t < CFG::sinks;
                if (tr) tr_qk[h * S + t] = acc[t];
                score[t] = (((float)acc[t] * (sink ? sqs[h] : sq[h])) * ks[t]) * CFG::scaling;
            }
            softmax<CFG>(score, p, n);
            for (unsigned t = 0; t < n; t++) p[t] = p[t] * vs[t];  // V scale folded into p (engine PV mode)
            float sp = act_quant<CFG>(p, n, pa);
            if (tr) for (unsigned t = 0; t < n; t++) tr_p[h * S + t] = pa[t].to_int();
            pv_dataflow<CFG>(pa, vc, vz, n, acc);
            for (unsigned d = 0; d < D; d++) {
                if (tr) tr_pv[h * D + d] = acc[d];
                out[h * D + d] = (float)acc[d] * sp;
            }
        }
    }
}

template <class CFG> void lm_head(const float *h, const uint8_t *embed, float *logits) {
    for (unsigned vtok = 0; vtok < CFG::vocab; vtok++) {
        const uint8_t *row = embed + (size_t)vtok * CFG::hidden * 2;
        double sum = 0.0;
        for (unsigned i = 0; i < CFG::hidden; i++) {
#pragma HLS PIPELINE II = 1
            sum += (double)h[i] * (double)half_to_float(row[2 * i] | (row[2 * i + 1] << 8));
        }
        logits[vtok] = (float)sum;
    }
}

// ---------------------------------------------------------------- the program interpreter

// One program run for nt <= CFG::block tokens at stream positions pos .. pos + nt - 1 (decode: nt = 1). Every
// instruction runs for the whole block before the next one, so each linear's weights are read once per block;
// attention runs token after token (each writes its KV slot, then attends over the Λ-occupied slots: causal
// over the block). Logits (when logits_en) are the last token's. Token t's trace is at trace + t * trace_stride.
template <class CFG> void run_block(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                                    const unsigned *tokens, unsigned nt, unsigned pos, float *logits, bool logits_en,
                                    int32_t *trace, bool trace_en) {
    static float buf[NUM_BUFS][CFG::block][CFG::max_vec];
    const size_t tr_stride = (size_t)CFG::layers * CFG::trace_size;
    float inv_freq[CFG::head_dim / 2];
    for (unsigned pc = 0; pc < n_instr; pc++) {
        const uint8_t *r = program + 32 * pc;
        const unsigned op = r[0], mode = r[1], layer = r[2] | (r[3] << 8);
        uint32_t a[7];
        for (unsigned i = 0; i < 7; i++) a[i] = rd_u32(r + 4 + 4 * i);
        int32_t *tl = trace_en ? trace + (size_t)layer * CFG::trace_size : 0;
        switch (op) {
        case OP_EMBED:
            count_weight_bytes((uint64_t)nt * CFG::hidden * 2);
            for (unsigned t = 0; t < nt; t++)
                for (unsigned i = 0; i < CFG::hidden; i++) {
                    const uint8_t *e = blob + a[1] + ((size_t)tokens[t] * CFG::hidden + i) * 2;
                    buf[a[0]][t][i] = half_to_float(e[0] | (e[1] << 8));
                }
            break;
        case OP_RMSNORM: {
            float w[CFG::hidden];
            count_weight_bytes(4 * CFG::hidden);
            for (unsigned i = 0; i < CFG::hidden; i++) w[i] = rd_f32(blob + a[2] + 4 * i);
            for (unsigned t = 0; t < nt; t++) rmsnorm<CFG>(buf[a[0]][t], w, buf[a[1]][t]);
            break;
        }
        case OP_LINEAR: {
            int32_t *ta = tl && a[5] != NONE ? tl + a[5] : 0, *tc = tl && a[6] != NONE ? tl + a[6] : 0;
            if (nt == 1)  // decode: matrix-vector on the integer core
                linear<CFG>(buf[a[0] & 0xFF][0], buf[(a[0] >> 8) & 0xFF][0], blob + a[1], a[2], a[3], a[4], mode, ta, tc);
            else
                linear_block<CFG>(buf[a[0] & 0xFF], buf[(a[0] >> 8) & 0xFF], nt, blob + a[1], a[2], a[3], a[4], mode,
                                  ta, tc, tr_stride);
            break;
        }
        case OP_ATTENTION:
            count_weight_bytes(4 * (CFG::head_dim / 2));
            for (unsigned j = 0; j < CFG::head_dim / 2; j++) inv_freq[j] = rd_f32(blob + a[5] + 4 * j);
            for (unsigned t = 0; t < nt; t++)
                attention<CFG>(layer, pos + t, buf[a[0]][t], buf[a[1]][t], buf[a[2]][t], buf[a[3]][t], kv, inv_freq,
                               tl ? tl + t * tr_stride + a[4] : 0);
            break;
        case OP_ADD:
            for (unsigned t = 0; t < nt; t++)
                for (unsigned i = 0; i < a[2]; i++) buf[a[0]][t][i] = buf[a[0]][t][i] + buf[a[1]][t][i];
            break;
        case OP_SILU_MUL:
            for (unsigned t = 0; t < nt; t++) silu_mul<CFG>(buf[a[0]][t], buf[a[1]][t], a[2]);
            break;
        case OP_LMHEAD:
            if (logits_en) {
                count_weight_bytes((uint64_t)CFG::vocab * CFG::hidden * 2);
                lm_head<CFG>(buf[a[0]][nt - 1], blob + a[1], logits);
            }
            break;
        default:
            return;  // OP_END
        }
    }
}

// Decode: one token.
template <class CFG> void run_program(const uint8_t *program, unsigned n_instr, const uint8_t *blob, uint8_t *kv,
                                      unsigned token, unsigned pos, float *logits, int32_t *trace, bool trace_en) {
    run_block<CFG>(program, n_instr, blob, kv, &token, 1, pos, logits, true, trace, trace_en);
}

}  // namespace accllm

#endif
