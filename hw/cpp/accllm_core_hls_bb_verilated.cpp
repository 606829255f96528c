// accllm_core_hls_bb() backed by the Verilated RTL wrapper (hw/rtl/accllm_core_hls_bb.v): the kernel's blackbox
// call drives the same ap_ctrl_chain and FIFO ports Vitis HLS connects in hardware, one clock at a time.
//
// The hls::stream arguments stand in for the FIFOs: a read port shows empty_n while the stream (or the word
// already taken from it) holds a beat and pops it on a cycle with read high; a write is accepted while full_n.
// accllm_rtl_stalls() makes the FIFOs randomly look empty (a producer falling behind) or full (a slow consumer),
// to exercise the handshakes; by default they never stall.
// One model instance lives for the whole process, as the single core does in the engine. Each call is logged
// (mode, beats, packets, outputs, cycles from ap_start to ap_done) and checked: the core must consume exactly
// the beats it was given and finish; a violation is counted as a protocol error.
#include <cstdio>
#include <cstring>
#include <vector>

#include "Vaccllm_core_hls_bb.h"
#include "verilated.h"
#include "accllm_core_hls_bb.h"

namespace {

const int L = ACCLLM_LANES;
// Cycles without any read or write after which a call is declared hung (the core's pipeline is a few cycles
// deep; stalls are at most 99 % of cycles) and counted as a protocol error instead of spinning forever.
const uint64_t IDLE_LIMIT = 100000;

struct Record { uint32_t mode, beats, packets, outputs; uint64_t cycles; };

VerilatedContext *g_ctx = nullptr;
Vaccllm_core_hls_bb *g_top = nullptr;
uint64_t g_cycles = 0, g_calls = 0, g_errors = 0;
bool g_log_on = false;
std::vector<Record> g_log;
unsigned g_stall_in = 0, g_stall_out = 0;  // percent of cycles a FIFO looks empty (inputs) / full (output)
uint64_t g_rng = 1;

bool stall(unsigned pct) {
    if (!pct) return false;
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (g_rng >> 33) % 100 < pct;
}

template <std::size_t N> void put(VlWide<N> &port, const uint8_t *bytes, unsigned nbytes) {
    for (std::size_t w = 0; w < N; w++) {
        uint32_t v = 0;
        for (unsigned i = 0; i < 4 && 4 * w + i < nbytes; i++) v |= (uint32_t)bytes[4 * w + i] << (8 * i);
        port[w] = v;
    }
}
void put(QData &port, const uint8_t *bytes, unsigned nbytes) {
    port = 0;
    for (unsigned i = 0; i < nbytes && i < 8; i++) port |= (QData)bytes[i] << (8 * i);
}
void put(IData &port, const uint8_t *bytes, unsigned nbytes) {
    port = 0;
    for (unsigned i = 0; i < nbytes && i < 4; i++) port |= (IData)bytes[i] << (8 * i);
}

void tick() {
    g_top->ap_clk = 0;
    g_top->eval();
    g_top->ap_clk = 1;
    g_top->eval();
    g_cycles++;
}

void init() {
    g_ctx = new VerilatedContext;
    g_top = new Vaccllm_core_hls_bb{g_ctx};
    g_top->ap_ce = 1;
    g_top->ap_start = 0;
    g_top->ap_continue = 0;
    g_top->a_empty_n = 0;
    g_top->b_empty_n = 0;
    g_top->acc_full_n = 1;
    g_top->ap_rst = 1;
    for (int i = 0; i < 4; i++) tick();
    g_top->ap_rst = 0;
    tick();
}

}  // namespace

void accllm_core_hls_bb(hls::stream<accllm_a_t> &a, hls::stream<accllm_b_t> &b, hls::stream<accllm_acc_t> &acc,
                        ap_uint<2> mode, ap_uint<32> n_out) {
    if (!g_top) init();
    uint8_t ab[2 * L], bb[L + 1];
    bool have_a = false, have_b = false;
    accllm_a_t aw;
    accllm_b_t bw;
    Record rec = {(uint32_t)mode, 0, 0, 0, 0};
    const uint64_t start = g_cycles;
    g_top->mode = (uint32_t)mode;
    g_top->n_out = (uint32_t)n_out;
    g_top->ap_start = 1;
    g_top->ap_continue = 0;
    bool done = false;
    uint64_t idle = 0;
    while (!done) {
        if (!have_a && !a.empty()) { aw = a.read(); have_a = true; accllm_get_bytes(aw, ab, 2 * L); put(g_top->a_dout, ab, 2 * L); }
        if (!have_b && !b.empty()) {
            bw = b.read();
            have_b = true;
            accllm_get_bytes(bw, bb, L);
            bb[L] = bw[8 * L];
            put(g_top->b_dout, bb, L + 1);
        }
        g_top->a_empty_n = have_a && !stall(g_stall_in);
        g_top->b_empty_n = have_b && !stall(g_stall_in);
        const bool full = stall(g_stall_out);
        g_top->acc_full_n = !full;
        g_top->ap_clk = 0;
        g_top->eval();  // the ports' combinational response to this cycle's inputs
        const bool rd_a = g_top->a_read, rd_b = g_top->b_read, wr = g_top->acc_write, ready = g_top->ap_ready;
        done = g_top->ap_done;
        const uint64_t out = g_top->acc_din;
        // the core consumes A and B in lockstep, only what a FIFO shows, and writes only while there is room
        if (rd_a != rd_b || (rd_a && !(g_top->a_empty_n && g_top->b_empty_n)) || (wr && full)) g_errors++;
        g_top->ap_continue = done;  // ap_ctrl_chain: the caller acknowledges ap_done in the cycle it sees it
        tick();
        if (rd_a) have_a = false;
        if (rd_b) {
            have_b = false;
            rec.beats++;
            rec.packets += bb[L] & 1;
        }
        if (wr && !full) {
            accllm_acc_t w = out;
            acc.write(w);
            rec.outputs++;
        }
        if (ready) g_top->ap_start = 0;
        idle = (rd_a || wr) ? 0 : idle + 1;
        if (idle > IDLE_LIMIT) {
            g_errors++;
            std::fprintf(stderr, "accllm_core_hls_bb (RTL): mode %u hung after %u of %u outputs\n", rec.mode,
                         rec.outputs, (unsigned)n_out);
            g_top->ap_rst = 1;  // recover the model for the next call, as a kernel reset would
            for (int i = 0; i < 4; i++) tick();
            g_top->ap_rst = 0;
            g_top->ap_start = 0;
            break;
        }
    }
    g_top->ap_continue = 0;
    rec.cycles = g_cycles - start;
    if (have_a || have_b || !a.empty() || !b.empty() || rec.outputs != (uint32_t)n_out) {
        g_errors++;
        std::fprintf(stderr, "accllm_core_hls_bb (RTL): mode %u left %s beats unread or gave %u of %u outputs\n",
                     rec.mode, (have_a || !a.empty() || have_b || !b.empty()) ? "some" : "no", rec.outputs,
                     (unsigned)n_out);
        while (!a.empty()) a.read();
        while (!b.empty()) b.read();
    }
    g_calls++;
    if (g_log_on) g_log.push_back(rec);
}

// ---------------------------------------------------------------- ctypes interface (accllm.sim.rtl_native)

extern "C" {

// stats: calls, cycles (all clock cycles since reset), protocol errors
void accllm_rtl_stats(uint64_t *stats) {
    stats[0] = g_calls;
    stats[1] = g_cycles;
    stats[2] = g_errors;
}

void accllm_rtl_stalls(unsigned in_pct, unsigned out_pct, uint64_t seed) {
    g_stall_in = in_pct;
    g_stall_out = out_pct;
    g_rng = seed | 1;
}

void accllm_rtl_log(int on) {
    g_log_on = on != 0;
    g_log.clear();
}

unsigned accllm_rtl_log_size() { return (unsigned)g_log.size(); }

// rows of (mode, beats, packets, outputs, cycles)
void accllm_rtl_log_read(uint64_t *rows) {
    for (std::size_t i = 0; i < g_log.size(); i++) {
        const Record &r = g_log[i];
        uint64_t *o = rows + 5 * i;
        o[0] = r.mode; o[1] = r.beats; o[2] = r.packets; o[3] = r.outputs; o[4] = r.cycles;
    }
}

// One core operation from byte arrays: a [beats, 2L], b [beats, L], last [beats]; out [n_out] int32.
void accllm_rtl_op(unsigned mode, unsigned n_out, const uint8_t *a_bytes, const uint8_t *b_bytes,
                   const uint8_t *last, unsigned beats, int32_t *out) {
    hls::stream<accllm_a_t> as;
    hls::stream<accllm_b_t> bs;
    hls::stream<accllm_acc_t> os;
    for (unsigned i = 0; i < beats; i++) {
        accllm_a_t aw;
        accllm_set_bytes(aw, a_bytes + (std::size_t)i * 2 * L, 2 * L);
        as.write(aw);
        bs.write(accllm_b_beat(b_bytes + (std::size_t)i * L, last[i] != 0));
    }
    accllm_core_hls_bb(as, bs, os, mode, n_out);
    for (unsigned i = 0; i < n_out && !os.empty(); i++) out[i] = accllm_acc_value(os.read());
}
}
