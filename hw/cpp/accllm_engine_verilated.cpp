// accllm_engine_linear() backed by the Verilated multi-channel engine (hw/rtl/accllm_engine.sv): the kernel's
// "run linear i on the engine" seam (hls/templates/accllm_kernel.h, ACCLLM_ENGINE_LINEAR; contract 6 of the
// project: nt <= T activation vectors against one weight pass) drives the engine's ports one clock at a time, as a
// host or control kernel would:
//   nt activation vectors into s_axis_act, registers over AXI4-Lite (MODE = mode | wbits << 4, NT, K, per channel
//   BASE and ROWS, CTRL.start),
//   each channel's AXI4 read master served by a memory model holding that channel's region of the build's
//   weights.engine (accllm.hls.engine_image), results collected from every channel's AXI4-Stream.
// Memory model: a burst's first beat is ready LATENCY cycles after its address handshake, bursts overlap (as many
// in flight as the engine issues), ARREADY / RVALID / TREADY drop at random with the set percentages. Every
// request is checked against the AXI4 rules the engine must keep (INCR, full-width beats, no 4 KiB crossing,
// inside the channel's region); a violation, a wrong output count or tlast, WORDS_READ differing from the
// sections' words, or a hung operation counts as a protocol error.
// Parameters (compile-time, must match the Verilated model): ENG_CHANNELS, ENG_CORES, ENG_LANES, ENG_W, ENG_GROUP,
// ENG_T (vectors per weight pass).
#include <cstdio>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

#include "Vaccllm_engine.h"
#include "verilated.h"

namespace {

const unsigned CH = ENG_CHANNELS, CORES = ENG_CORES, LANES = ENG_LANES, W = ENG_W, WBYTES = ENG_W / 8;
const unsigned OUT_BITS = 48 * CORES;
const uint64_t MEM_BASE = 1ull << 32;  // every channel's region sits above 4 GiB (exercises BASE_HI)
const uint64_t IDLE_LIMIT = 200000;

struct Burst { uint64_t ready, addr; unsigned left; };
struct Section { uint64_t offset; unsigned r0, r1; };
struct Record { uint32_t linear, mode, rows, k; uint64_t cycles, words, harness_cycles; uint32_t nt, wbits; };

VerilatedContext *g_ctx = nullptr;
Vaccllm_engine *g_top = nullptr;
std::vector<std::vector<uint8_t>> g_mem(CH);
std::vector<Section> g_sections;  // [linear * CH + ch]
unsigned g_linears = 0;
std::deque<Burst> g_q[CH];
uint64_t g_cycles = 0, g_calls = 0, g_errors = 0, g_engine_cycles = 0, g_words = 0;
unsigned g_latency = 100, g_ar_stall = 0, g_r_stall = 0, g_out_stall = 0;
uint64_t g_rng = 1;
uint32_t g_offered = 0;  // channels whose R beat was offered and not yet taken: it stays (AXI4)
bool g_log_on = false;
std::vector<Record> g_log;

bool stall(unsigned pct) {
    if (!pct) return false;
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (g_rng >> 33) % 100 < pct;
}

void error(const char *what, unsigned linear) {
    g_errors++;
    if (g_errors <= 10) std::fprintf(stderr, "accllm_engine (RTL), linear %u: %s\n", linear, what);
}

// Bit access on Verilator port types: scalars (CData/SData/IData/QData) and VlWide<N> (32-bit words).
template <class T> typename std::enable_if<std::is_integral<T>::value, uint32_t>::type word(const T &s, unsigned i) {
    return i * 32 < 8 * sizeof(T) ? (uint32_t)((uint64_t)s >> (32 * i)) : 0u;
}
template <std::size_t N> uint32_t word(const VlWide<N> &s, unsigned i) { return i < N ? s[i] : 0u; }
template <class T> typename std::enable_if<std::is_integral<T>::value>::type set_word(T &s, unsigned i, uint32_t v) {
    if (i * 32 >= 8 * sizeof(T)) return;
    const uint64_t m = 0xFFFFFFFFull << (32 * i);
    s = (T)(((uint64_t)s & ~m) | ((uint64_t)v << (32 * i)));
}
template <std::size_t N> void set_word(VlWide<N> &s, unsigned i, uint32_t v) { if (i < N) s[i] = v; }
template <class T> uint64_t bits(const T &s, unsigned lo, unsigned w) {  // w <= 32
    const uint64_t two = word(s, lo / 32) | ((uint64_t)word(s, lo / 32 + 1) << 32);
    return (two >> (lo % 32)) & ((1ull << w) - 1);
}
template <class T> uint64_t bits64(const T &s, unsigned lo) { return bits(s, lo, 32) | (bits(s, lo + 32, 32) << 32); }

void tick() {
    g_top->clk = 0;
    g_top->eval();
    g_top->clk = 1;
    g_top->eval();
    g_cycles++;
}

// One clock of the memory model and the output sinks around the engine; collects output beats per channel.
void cycle(std::vector<std::vector<std::vector<uint32_t>>> *out, std::vector<std::vector<uint8_t>> *lasts,
           unsigned linear) {
    // drives for this cycle
    uint32_t ar_ready = 0, r_valid = 0, r_last = 0, t_ready = 0;
    for (unsigned ch = 0; ch < CH; ch++) {
        if (!stall(g_ar_stall)) ar_ready |= 1u << ch;
        if (!stall(g_out_stall)) t_ready |= 1u << ch;
        const bool held = (g_offered >> ch) & 1;
        if (!g_q[ch].empty() && g_q[ch].front().ready <= g_cycles && (held || !stall(g_r_stall))) {
            const Burst &b = g_q[ch].front();
            r_valid |= 1u << ch;
            r_last |= (uint32_t)(b.left == 1) << ch;
            const uint64_t off = b.addr - MEM_BASE;
            for (unsigned j = 0; j < W / 32; j++) {
                uint32_t v = 0;
                for (unsigned i = 0; i < 4; i++) {
                    const uint64_t a = off + 4 * j + i;
                    v |= (uint32_t)(a < g_mem[ch].size() ? g_mem[ch][a] : 0) << (8 * i);
                }
                set_word(g_top->m_axi_rdata, ch * W / 32 + j, v);
            }
        }
    }
    g_top->m_axi_arready = ar_ready;
    g_top->m_axi_rvalid = r_valid;
    g_top->m_axi_rlast = r_last;
    g_top->m_axis_tready = t_ready;
    g_top->clk = 0;
    g_top->eval();
    // handshakes of this cycle, as the registers will see them at the edge
    const uint32_t fire_ar = (uint32_t)g_top->m_axi_arvalid & ar_ready;
    const uint32_t fire_r = (uint32_t)g_top->m_axi_rready & r_valid;
    const uint32_t fire_t = (uint32_t)g_top->m_axis_tvalid & t_ready;
    for (unsigned ch = 0; ch < CH; ch++) {
        if ((fire_ar >> ch) & 1) {
            const uint64_t addr = bits64(g_top->m_axi_araddr, 64 * ch);
            const unsigned len = (unsigned)bits(g_top->m_axi_arlen, 8 * ch, 8) + 1;
            const unsigned size = (unsigned)bits(g_top->m_axi_arsize, 3 * ch, 3);
            const unsigned burst = (unsigned)bits(g_top->m_axi_arburst, 2 * ch, 2);
            if (burst != 1) error("ARBURST is not INCR", linear);
            if ((1u << size) != WBYTES) error("ARSIZE is not the full channel width", linear);
            if (addr % WBYTES) error("ARADDR not word aligned", linear);
            if ((addr & 0xFFF) + (uint64_t)len * WBYTES > 0x1000) error("burst crosses a 4 KiB boundary", linear);
            if (addr < MEM_BASE || addr + (uint64_t)len * WBYTES > MEM_BASE + g_mem[ch].size())
                error("burst outside the channel's region", linear);
            g_q[ch].push_back({g_cycles + g_latency, addr, len});
        }
        if ((fire_r >> ch) & 1) {
            Burst &b = g_q[ch].front();
            b.addr += WBYTES;
            if (--b.left == 0) g_q[ch].pop_front();
        }
        if (((fire_t >> ch) & 1) && out) {
            std::vector<uint32_t> beat(OUT_BITS / 16);
            for (unsigned i = 0; i < OUT_BITS / 16; i++) beat[i] = (uint32_t)bits(g_top->m_axis_tdata, ch * OUT_BITS + 16 * i, 16);
            (*out)[ch].push_back(beat);
            (*lasts)[ch].push_back((g_top->m_axis_tlast >> ch) & 1);
        }
    }
    g_offered = r_valid & ~fire_r;
    g_top->clk = 1;
    g_top->eval();
    g_cycles++;
}

void axil_write(uint32_t addr, uint32_t data, unsigned linear) {
    g_top->s_axil_awaddr = addr;
    g_top->s_axil_wdata = data;
    g_top->s_axil_wstrb = 0xF;
    g_top->s_axil_awvalid = 1;
    g_top->s_axil_wvalid = 1;
    g_top->s_axil_bready = 1;
    bool aw = false, w = false, b = false;
    for (unsigned n = 0; n < 1000 && !b; n++) {
        g_top->clk = 0;
        g_top->eval();
        const bool aw_fire = g_top->s_axil_awvalid && g_top->s_axil_awready;
        const bool w_fire = g_top->s_axil_wvalid && g_top->s_axil_wready;
        const bool b_fire = g_top->s_axil_bvalid && g_top->s_axil_bready;
        cycle(nullptr, nullptr, linear);
        aw |= aw_fire; w |= w_fire; b |= b_fire;
        if (aw) g_top->s_axil_awvalid = 0;
        if (w) g_top->s_axil_wvalid = 0;
    }
    g_top->s_axil_awvalid = 0;
    g_top->s_axil_wvalid = 0;
    g_top->s_axil_bready = 0;
    if (!b) error("AXI4-Lite write not acknowledged", linear);
}

uint32_t axil_read(uint32_t addr, unsigned linear) {
    g_top->s_axil_araddr = addr;
    g_top->s_axil_arvalid = 1;
    g_top->s_axil_rready = 1;
    bool ar = false;
    for (unsigned n = 0; n < 1000; n++) {
        g_top->clk = 0;
        g_top->eval();
        const bool ar_fire = g_top->s_axil_arvalid && g_top->s_axil_arready;
        const bool r_fire = g_top->s_axil_rvalid && g_top->s_axil_rready;
        const uint32_t v = g_top->s_axil_rdata;
        cycle(nullptr, nullptr, linear);
        if (ar_fire) { ar = true; g_top->s_axil_arvalid = 0; }
        if (r_fire && ar) { g_top->s_axil_rready = 0; return v; }
    }
    g_top->s_axil_arvalid = 0;
    g_top->s_axil_rready = 0;
    error("AXI4-Lite read not answered", linear);
    return 0;
}

void init() {
    g_ctx = new VerilatedContext;
    g_top = new Vaccllm_engine{g_ctx};
    g_top->rst_n = 0;
    g_top->s_axil_awvalid = g_top->s_axil_wvalid = g_top->s_axil_arvalid = 0;
    g_top->s_axil_bready = g_top->s_axil_rready = 0;
    g_top->s_axil_awprot = g_top->s_axil_arprot = 0;
    g_top->s_axis_act_tvalid = 0;
    g_top->s_axis_act_tlast = 0;
    g_top->m_axi_rresp = 0;
    g_top->m_axi_rid = 0;
    for (int i = 0; i < 4; i++) tick();
    g_top->rst_n = 1;
    tick();
    const uint32_t info = axil_read(0x010, 0);
    if ((info & 0xFF) != CH || ((info >> 8) & 0xFF) != CORES || ((info >> 16) & 0xFF) != LANES)
        error("INFO register disagrees with the harness parameters", 0);
    if (axil_read(0x020, 0) != ENG_T) error("T register disagrees with the harness parameters", 0);
}

// Record bits of a DENSE/SPARSE record with wbits-bit codes (accllm.sim.weight_stream.StreamFormat.record_bits).
unsigned record_bits(unsigned mode, unsigned wbits, unsigned group) {
    return mode == 1 ? 16 + wbits + group * wbits / 2 + 3 * group / 4 : 16 + wbits + group * wbits;
}

}  // namespace

// Linear ``linear`` of the engine image on nt <= T activation vectors a[nt][k] in one weight pass: accumulators
// acc[nt][n][k / GROUP] and the records' fp16 scales scale[n][k / GROUP]. mode 0 DENSE / 1 SPARSE, wbits 2 or 4.
extern "C" void accllm_engine_linear(unsigned linear, unsigned mode, unsigned wbits, const int8_t *a, unsigned nt,
                                     unsigned k, unsigned n, int32_t *acc, uint16_t *scale) {
    if (!g_top) init();
    const unsigned group = ENG_GROUP, groups = k / group;
    std::memset(acc, 0, sizeof(int32_t) * (size_t)nt * n * groups);
    std::memset(scale, 0, sizeof(uint16_t) * (size_t)n * groups);
    if (linear >= g_linears || k % group || k % LANES) { error("linear not in the engine image, or bad K", linear); return; }
    if (nt < 1 || nt > ENG_T) { error("nt outside 1..T", linear); return; }
    if (mode > 1 || (wbits != 2 && wbits != 4)) { error("a linear runs DENSE or SPARSE with 2- or 4-bit codes", linear); return; }
    const Section *sec = &g_sections[(size_t)linear * CH];
    if (sec[CH - 1].r1 != n) { error("the image's rows differ from the program's N", linear); return; }
    const uint64_t start = g_cycles;
    // activations, LANES int8 values a beat, vector after vector (tlast ends each), while the engine is idle
    for (unsigned t = 0; t < nt; t++)
        for (unsigned c = 0; c < k / LANES; c++) {
            const int8_t *src = a + (size_t)t * k + c * LANES;
            for (unsigned j = 0; j < LANES / 4; j++) {
                uint32_t v = 0;
                for (unsigned i = 0; i < 4; i++) v |= (uint32_t)(uint8_t)src[4 * j + i] << (8 * i);
                set_word(g_top->s_axis_act_tdata, j, v);
            }
            g_top->s_axis_act_tlast = c == k / LANES - 1;
            g_top->s_axis_act_tvalid = 1;
            unsigned spins = 0;
            for (;;) {
                g_top->clk = 0;
                g_top->eval();
                const bool fire = g_top->s_axis_act_tready;
                cycle(nullptr, nullptr, linear);
                if (fire) break;
                if (++spins > IDLE_LIMIT) { error("activation stream not accepted", linear); return; }
            }
        }
    g_top->s_axis_act_tvalid = 0;
    g_top->s_axis_act_tlast = 0;
    axil_write(0x004, mode | wbits << 4, linear);
    axil_write(0x01C, nt, linear);
    axil_write(0x008, k, linear);
    std::vector<unsigned> want(CH), words(CH);
    const unsigned rec_bits = record_bits(mode, wbits, group);
    for (unsigned ch = 0; ch < CH; ch++) {
        const uint64_t base = MEM_BASE + sec[ch].offset;
        const unsigned rows = sec[ch].r1 - sec[ch].r0, tiles = (rows + CORES - 1) / CORES;
        want[ch] = tiles * groups * nt;
        words[ch] = (unsigned)(((uint64_t)tiles * groups * CORES * rec_bits + W - 1) / W);
        axil_write(0x100 + 16 * ch, (uint32_t)base, linear);
        axil_write(0x104 + 16 * ch, (uint32_t)(base >> 32), linear);
        axil_write(0x108 + 16 * ch, rows, linear);
    }
    std::vector<std::vector<std::vector<uint32_t>>> out(CH);
    std::vector<std::vector<uint8_t>> lasts(CH);
    axil_write(0x000, 1, linear);
    uint64_t idle = 0;
    for (;;) {
        bool all = true;
        for (unsigned ch = 0; ch < CH; ch++) all = all && out[ch].size() >= want[ch];
        if (all) break;
        size_t before = 0;
        for (unsigned ch = 0; ch < CH; ch++) before += out[ch].size();
        cycle(&out, &lasts, linear);
        size_t after = 0;
        for (unsigned ch = 0; ch < CH; ch++) after += out[ch].size();
        idle = after != before ? 0 : idle + 1;
        if (idle > IDLE_LIMIT) { error("hung: output beats missing", linear); break; }
    }
    uint32_t ctrl = 0;
    for (unsigned i = 0; i < 50 && !(ctrl & 2); i++) ctrl = axil_read(0x000, linear);
    if (!(ctrl & 2)) error("CTRL.done not set after the last output beat", linear);
    const uint32_t cycles = axil_read(0x00C, linear);
    uint64_t words_read = 0;
    for (unsigned ch = 0; ch < CH; ch++) {
        const uint32_t wr = axil_read(0x10C + 16 * ch, linear);
        words_read += wr;
        if (wr != words[ch]) error("WORDS_READ differs from the section's words", linear);
        if (out[ch].size() != want[ch]) error("wrong number of output beats", linear);
        for (size_t i = 0; i < lasts[ch].size(); i++)
            if (lasts[ch][i] != (i + 1 == want[ch])) error("tlast on the wrong beat", linear);
        // beat i = (super-record i / nt, vector i % nt); super-record (tile t, record g): core c -> row r0 + t*CORES + c
        for (size_t i = 0; i < out[ch].size() && i < want[ch]; i++) {
            const unsigned sr = (unsigned)(i / nt), v = (unsigned)(i % nt), t = sr / groups, g = sr % groups;
            for (unsigned c = 0; c < CORES; c++) {
                const unsigned row = sec[ch].r0 + t * CORES + c;
                if (row >= sec[ch].r1) continue;
                const std::vector<uint32_t> &b = out[ch][i];
                acc[((size_t)v * n + row) * groups + g] = (int32_t)(b[2 * c] | (b[2 * c + 1] << 16));
                uint16_t &s = scale[(size_t)row * groups + g];
                if (v == 0) s = (uint16_t)b[2 * CORES + c];
                else if (s != (uint16_t)b[2 * CORES + c]) error("a record's scale differs between vectors", linear);
            }
        }
    }
    for (unsigned ch = 0; ch < CH; ch++)
        if (!g_q[ch].empty()) error("read bursts left outstanding after done", linear);
    g_calls++;
    g_engine_cycles += cycles;
    g_words += words_read;
    if (g_log_on) g_log.push_back({linear, mode, n, k, cycles, words_read, g_cycles - start, nt, wbits});
}

// ---------------------------------------------------------------- ctypes interface (accllm.hw.engine_native)

extern "C" {

// The engine image: channel regions (bytes) and, per linear and channel, the section's offset in its region and
// its rows [r0, r1) of the linear.
void accllm_engine_image(const uint8_t *image, const uint64_t *region_offset, const uint64_t *region_bytes,
                         unsigned linears, const uint64_t *sections) {
    for (unsigned ch = 0; ch < CH; ch++)
        g_mem[ch].assign(image + region_offset[ch], image + region_offset[ch] + region_bytes[ch]);
    g_linears = linears;
    g_sections.resize((size_t)linears * CH);
    for (size_t i = 0; i < g_sections.size(); i++)
        g_sections[i] = {sections[3 * i], (unsigned)sections[3 * i + 1], (unsigned)sections[3 * i + 2]};
}

void accllm_engine_memory(unsigned latency, unsigned ar_stall, unsigned r_stall, unsigned out_stall, uint64_t seed) {
    g_latency = latency;
    g_ar_stall = ar_stall;
    g_r_stall = r_stall;
    g_out_stall = out_stall;
    g_rng = seed | 1;
}

// calls, harness clock cycles, protocol errors, engine cycles (CYCLES register summed), words read
void accllm_engine_stats(uint64_t *s) {
    s[0] = g_calls; s[1] = g_cycles; s[2] = g_errors; s[3] = g_engine_cycles; s[4] = g_words;
}

void accllm_engine_log(int on) {
    g_log_on = on != 0;
    g_log.clear();
}

unsigned accllm_engine_log_size() { return (unsigned)g_log.size(); }

// rows of (linear, mode, rows, k, cycles, words, harness_cycles, nt, wbits)
void accllm_engine_log_read(uint64_t *rows) {
    for (std::size_t i = 0; i < g_log.size(); i++) {
        const Record &r = g_log[i];
        uint64_t *o = rows + 9 * i;
        o[0] = r.linear; o[1] = r.mode; o[2] = r.rows; o[3] = r.k; o[4] = r.cycles; o[5] = r.words;
        o[6] = r.harness_cycles; o[7] = r.nt; o[8] = r.wbits;
    }
}
}
