// The Verilated multi-channel engine (hw/rtl/accllm_engine.sv) behind the HLS kernel's engine streams, for C/RTL
// co-simulation (accllm.hw.engine_native; the kernel built with ACCLLM_ENGINE_STREAM, hls/templates/accllm_kernel.h):
// the kernel writes one operation's command beats (register writes: MODE = mode | wbits << 4, NT, K, per channel
// BASE = the section's offset in the channel's region and ROWS, CTRL.start with tlast; accllm.sim.engine_regs) and
// its activation beats; accllm_engine_streams() drives exactly those beats, with their tlast, into s_axis_cmd and
// s_axis_act (both at once, with random gaps: the engine's start waits for the activations), runs the engine one
// clock at a time until every channel's result stream has ended with tlast, and keeps the result beats, which the
// kernel reads back into its per-channel result streams. As a host would, the harness sets each channel's REGION
// over AXI4-Lite once (its region of the build's weights.engine, accllm.hls.engine_image, sits above 4 GiB) and
// reads CTRL, CYCLES and WORDS_READ over AXI4-Lite after each operation.
// Memory model: a burst's first beat is ready LATENCY cycles after its address handshake, bursts overlap (as many
// in flight as the engine issues), ARREADY / RVALID / TREADY drop at random with the set percentages. Every
// request is checked against the AXI4 rules the engine must keep (INCR, full-width beats, no 4 KiB crossing,
// inside the channel's region); a violation, commands that name no linear of the image, a wrong output count or
// tlast, WORDS_READ differing from the sections' words, or a hung operation counts as a protocol error.
// Parameters (compile-time, must match the Verilated model): ENG_CHANNELS, ENG_CORES, ENG_LANES, ENG_W, ENG_GROUP,
// ENG_T (vectors per weight pass).
#include <cstdio>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

#include "Vaccllm_engine.h"
#include "accllm_engine_regs.h"  // generated from accllm.sim.engine_regs
#include "verilated.h"

using namespace accllm_engine_regs;

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
std::vector<std::vector<std::vector<uint32_t>>> g_out(CH);  // the last operation's result beats (16-bit pieces)
std::vector<std::vector<uint8_t>> g_lasts(CH);

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
    g_top->s_axis_cmd_tvalid = 0;
    g_top->s_axis_cmd_tlast = 0;
    g_top->m_axi_rresp = 0;
    g_top->m_axi_rid = 0;
    for (int i = 0; i < 4; i++) tick();
    g_top->rst_n = 1;
    tick();
    const uint32_t info = axil_read(ENG_REG_INFO, 0);
    if ((info & 0xFF) != CH || ((info >> 8) & 0xFF) != CORES || ((info >> 16) & 0xFF) != LANES)
        error("INFO register disagrees with the harness parameters", 0);
    if (axil_read(ENG_REG_T, 0) != ENG_T) error("T register disagrees with the harness parameters", 0);
    for (unsigned ch = 0; ch < CH; ch++) {  // the host places each channel's region of the image
        axil_write(eng_region_reg(ch, ENG_REGION_LO), (uint32_t)MEM_BASE, 0);
        axil_write(eng_region_reg(ch, ENG_REGION_HI), (uint32_t)(MEM_BASE >> 32), 0);
    }
}

// Record bits of a DENSE/SPARSE record with wbits-bit codes (accllm.sim.weight_stream.StreamFormat.record_bits).
unsigned record_bits(unsigned mode, unsigned wbits, unsigned group) {
    return mode == 1 ? 16 + wbits + group * wbits / 2 + 3 * group / 4 : 16 + wbits + group * wbits;
}

// The registers an operation's command beats write (the engine's copy, decoded the same way).
struct OpRegs { uint32_t mode = 0, nt = 1, k = 0; uint64_t base[CH] = {}; uint32_t rows[CH] = {}; unsigned starts = 0; };

}  // namespace

// One operation from the kernel's streams: n_cmd command beats (tdata, tlast) and n_act activation beats (LANES
// bytes each, tlast). Returns the number of result beats kept (accllm_engine_result_count / accllm_engine_result).
extern "C" unsigned accllm_engine_streams(const uint64_t *cmd, const uint8_t *cmd_last, unsigned n_cmd,
                                          const uint8_t *act, const uint8_t *act_last, unsigned n_act) {
    if (!g_top) init();
    for (unsigned ch = 0; ch < CH; ch++) { g_out[ch].clear(); g_lasts[ch].clear(); }
    OpRegs r;
    for (unsigned i = 0; i < n_cmd; i++) {
        const unsigned addr = eng_cmd_addr(cmd[i]);
        const uint32_t data = eng_cmd_data(cmd[i]);
        if (addr == ENG_REG_MODE) r.mode = data;
        else if (addr == ENG_REG_NT) r.nt = data;
        else if (addr == ENG_REG_K) r.k = data;
        else if (addr == ENG_REG_CTRL && (data & ENG_CTRL_START)) r.starts++;
        for (unsigned ch = 0; ch < CH; ch++) {
            if (addr == eng_ch_reg(ch, ENG_CH_BASE_LO)) r.base[ch] = (r.base[ch] & ~0xFFFFFFFFull) | data;
            if (addr == eng_ch_reg(ch, ENG_CH_BASE_HI)) r.base[ch] = (r.base[ch] & 0xFFFFFFFFull) | (uint64_t)data << 32;
            if (addr == eng_ch_reg(ch, ENG_CH_ROWS)) r.rows[ch] = data;
        }
    }
    const unsigned mode = r.mode & 3, wbits = (r.mode >> 4) & 15, nt = r.nt ? r.nt : 1, k = r.k;
    // which linear of the image the commands name: every channel's BASE and ROWS are its sections'
    unsigned linear = g_linears;
    for (unsigned l = 0; l < g_linears && linear == g_linears; l++) {
        bool same = true;
        for (unsigned ch = 0; ch < CH; ch++) {
            const Section &sec = g_sections[(size_t)l * CH + ch];
            same = same && sec.offset == r.base[ch] && sec.r1 - sec.r0 == r.rows[ch];
        }
        if (same) linear = l;
    }
    if (n_cmd == 0 || r.starts != 1 || !cmd_last[n_cmd - 1] || eng_cmd_addr(cmd[n_cmd - 1]) != ENG_REG_CTRL)
        error("the command beats are not one operation ending with CTRL.start and tlast", linear);
    if (linear == g_linears) { error("the commands name no linear of the engine image", linear); return 0; }
    const unsigned group = ENG_GROUP, groups = k / group;
    if (k % group || k % LANES || mode > 1 || (wbits != 2 && wbits != 4) || nt > ENG_T) {
        error("a linear runs DENSE or SPARSE, 2- or 4-bit codes, K a multiple of GROUP, nt <= T", linear);
        return 0;
    }
    unsigned vectors = 0;
    for (unsigned i = 0; i < n_act; i++) vectors += act_last[i] != 0;
    if (n_act != nt * (k / LANES) || vectors != nt || !act_last[n_act - 1])
        error("activation beats are not NT vectors of K / LANES beats, each ending with tlast", linear);
    std::vector<unsigned> want(CH), words(CH);
    const unsigned rec_bits = record_bits(mode, wbits, group);
    for (unsigned ch = 0; ch < CH; ch++) {
        const unsigned tiles = (r.rows[ch] + CORES - 1) / CORES;
        want[ch] = tiles * groups * nt;
        words[ch] = (unsigned)(((uint64_t)tiles * groups * CORES * rec_bits + W - 1) / W);
    }
    const uint64_t start = g_cycles;
    // both input streams at once, each beat held until taken, a random gap now and then
    unsigned ci = 0, ai = 0;
    uint64_t idle = 0;
    bool ended[CH] = {};
    for (;;) {
        bool all = true;
        for (unsigned ch = 0; ch < CH; ch++) all = all && (want[ch] == 0 || ended[ch]);
        if (all && ci == n_cmd && ai == n_act) break;
        const bool cv = ci < n_cmd && (g_top->s_axis_cmd_tvalid || !stall(g_out_stall));
        const bool av = ai < n_act && (g_top->s_axis_act_tvalid || !stall(g_out_stall));
        g_top->s_axis_cmd_tvalid = cv;
        if (cv) {
            g_top->s_axis_cmd_tdata = cmd[ci];
            g_top->s_axis_cmd_tlast = cmd_last[ci];
        }
        g_top->s_axis_act_tvalid = av;
        if (av) {
            for (unsigned j = 0; j < LANES / 4; j++) {
                uint32_t v = 0;
                for (unsigned b = 0; b < 4; b++) v |= (uint32_t)act[(size_t)ai * LANES + 4 * j + b] << (8 * b);
                set_word(g_top->s_axis_act_tdata, j, v);
            }
            g_top->s_axis_act_tlast = act_last[ai];
        }
        g_top->clk = 0;
        g_top->eval();
        const bool cfire = cv && g_top->s_axis_cmd_tready, afire = av && g_top->s_axis_act_tready;
        size_t before = 0, after = 0;
        for (unsigned ch = 0; ch < CH; ch++) before += g_out[ch].size();
        cycle(&g_out, &g_lasts, linear);
        for (unsigned ch = 0; ch < CH; ch++) {
            after += g_out[ch].size();
            if (!g_lasts[ch].empty() && g_lasts[ch].back()) ended[ch] = true;
        }
        if (cfire) { ci++; g_top->s_axis_cmd_tvalid = 0; }
        if (afire) { ai++; g_top->s_axis_act_tvalid = 0; }
        idle = (after != before || cfire || afire) ? 0 : idle + 1;
        if (idle > IDLE_LIMIT) { error("hung: beats not taken or results missing", linear); break; }
    }
    g_top->s_axis_cmd_tvalid = 0;
    g_top->s_axis_act_tvalid = 0;
    uint32_t ctrl = 0;
    for (unsigned i = 0; i < 50 && !(ctrl & ENG_CTRL_DONE); i++) ctrl = axil_read(ENG_REG_CTRL, linear);
    if (!(ctrl & ENG_CTRL_DONE)) error("CTRL.done not set after the last output beat", linear);
    const uint32_t cycles = axil_read(ENG_REG_CYCLES, linear);
    uint64_t words_read = 0;
    unsigned kept = 0;
    for (unsigned ch = 0; ch < CH; ch++) {
        const uint32_t wr = axil_read(eng_ch_reg(ch, ENG_CH_WORDS_READ), linear);
        words_read += wr;
        if (wr != words[ch]) error("WORDS_READ differs from the section's words", linear);
        if (g_out[ch].size() != want[ch]) error("wrong number of output beats", linear);
        for (size_t i = 0; i < g_lasts[ch].size(); i++)
            if (g_lasts[ch][i] != (i + 1 == want[ch])) error("tlast on the wrong beat", linear);
        kept += (unsigned)g_out[ch].size();
    }
    for (unsigned ch = 0; ch < CH; ch++)
        if (!g_q[ch].empty()) error("read bursts left outstanding after done", linear);
    g_calls++;
    g_engine_cycles += cycles;
    g_words += words_read;
    unsigned rows = 0;
    for (unsigned ch = 0; ch < CH; ch++) rows += r.rows[ch];
    if (g_log_on) g_log.push_back({linear, mode, rows, k, cycles, words_read, g_cycles - start, nt, wbits});
    return kept;
}

extern "C" unsigned accllm_engine_result_count(unsigned ch) { return ch < CH ? (unsigned)g_out[ch].size() : 0; }

// Result beat i of channel ch: its 3 * CORES 16-bit pieces (CORES accumulators as two pieces each, low first,
// then CORES fp16 scales) and its tlast.
extern "C" void accllm_engine_result(unsigned ch, unsigned i, uint16_t *beat, uint8_t *last) {
    for (unsigned j = 0; j < OUT_BITS / 16; j++) beat[j] = (uint16_t)g_out[ch][i][j];
    *last = g_lasts[ch][i];
}

// ---------------------------------------------------------------- ctypes interface (accllm.hw.engine_native)

extern "C" {

// The engine image: channel regions (bytes) and, per linear and channel, the section's offset in its region and
// its rows [r0, r1) of the linear.
// Loading an image restarts the engine from reset with empty memory queues (as a host resets the engine when it
// loads a new image): nothing a previous run left in flight reaches the next one.
void accllm_engine_image(const uint8_t *image, const uint64_t *region_offset, const uint64_t *region_bytes,
                         unsigned linears, const uint64_t *sections) {
    if (g_top) {
        g_top->final();
        delete g_top;
        delete g_ctx;
        g_top = nullptr;
        g_ctx = nullptr;
    }
    for (unsigned ch = 0; ch < CH; ch++) { g_q[ch].clear(); g_out[ch].clear(); g_lasts[ch].clear(); }
    g_offered = 0;
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
