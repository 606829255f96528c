// accllm_engine: the accelerator's integer engine. CHANNELS memory channels, each an AXI4 read master (bursts,
// several reads in flight, full-width beats) feeding CORES cores from its weight stream; int8 activations
// broadcast to every channel; results out as one AXI4-Stream per channel. The memory format is defined once in
// accllm.sim.weight_stream; the arithmetic in accllm.sim.golden_core; the registers and the command encoding in
// accllm.sim.engine_regs (generated into the kernel's accllm_engine_regs.h).
//
// Registers (32-bit, byte addresses), written over AXI4-Lite (host, debug) or the command stream (HLS kernel):
//   0x000 CTRL     W: bit0 = start.  R: bit0 busy, bit1 done (set when every channel finished, cleared by start)
//   0x004 MODE     the program's mode byte: [1:0] mode (0 dense, 1 2:4 sparse, 2 QK, 3 PV), [7:4] weight code
//                  width of DENSE/SPARSE (2 or 4; 0 reads as 2; 4 needs a WBITS = 4 build)
//   0x008 K        inputs per row (a multiple of GROUP in dense/sparse, of LANES in QK/PV)
//   0x00C CYCLES   R: clock cycles from start to done
//   0x010 INFO     R: [7:0] CHANNELS, [15:8] CORES, [23:16] LANES, [27:24] WBITS (widest code decoded),
//                  [31:28] log2(W / 128)
//   0x014 GROUP    R
//   0x018 K_MAX    R
//   0x01C NT       activation vectors of the operation, 1..T (0 reads as 1; DENSE/SPARSE only, QK/PV run one)
//   0x020 T        R: vectors the activation RAM holds (block mode)
//   0x100 + 16*ch  BASE_LO, +4 BASE_HI (word-aligned byte offset of the channel's section in its region), +8 ROWS,
//                  +12 WORDS_READ (R: words received by the last operation)
//   0x800 + 8*ch   REGION_LO, +4 REGION_HI: byte address of the channel's region (reset 0); the channel reads
//                  from REGION + BASE. The host sets REGION where it loaded each channel's part of the engine image
//                  (weights.engine); the kernel sets BASE per operation from the compiled section table.
// Command stream s_axis_cmd: one beat per register write, tdata[11:0] address, tdata[63:32] value, tlast on an
// operation's last beat (its CTRL.start; not needed by the engine). Beats are taken only while the engine is idle
// (registers stay stable from start to done), and a CTRL.start beat only once the operation's activation vectors
// (NT for DENSE/SPARSE, 1 for QK/PV) have arrived since the last start, so the two streams need no ordering
// between them (the HLS kernel sends the activations first: nothing it writes waits on a later beat). AXI4-Lite and the stream share one register-write port; an AXI4-Lite
// write goes first when both come in one cycle (the beat waits). An AXI4-Lite start does not wait for activations.
// Activations: s_axis_act, LANES int8 values per beat from index 0, tlast on the last beat of each vector; load
// the NT vectors of an operation one after another while the engine is idle (vector 0 first; start rewinds to
// vector 0; beats past T vectors are dropped). Results: per channel m_axis (tdata 48*CORES bits: CORES signed
// 32-bit accumulators, then CORES fp16 scales; tlast on the channel's last beat), one beat per closed
// accumulation: DENSE/SPARSE NT beats per super-record (vector 0 first), QK/PV one per row tile
// (accllm.sim.weight_stream.output_beats). Completion for a kernel: tlast on every channel with rows.
//
// Ports are flat vectors (channel ch at [ch*WIDTH +: WIDTH]) so every tool reads them.
module accllm_engine #(
    parameter int CHANNELS = 2,
    parameter int CORES = 4,
    parameter int LANES = 16,
    parameter int GROUP = 32,
    parameter int WBITS = 4,        // widest weight code decoded: 2 (W2 only) or 4 (W2 and W4, per operation)
    parameter int W = 256,          // channel width: 128, 256 or 512 bits
    parameter int ADDR_W = 64,
    parameter int BURST = 64,
    parameter int FIFO_DEPTH = 256,
    parameter int K_MAX = 4096,
    parameter int T = 1,            // block mode: activation vectors held (one weight pass serves up to T)
    parameter int OUT_DEPTH = 8
) (
    input  logic                          clk,
    input  logic                          rst_n,
    // AXI4-Lite control
    input  logic [11:0]                   s_axil_awaddr,
    input  logic [2:0]                    s_axil_awprot,
    input  logic                          s_axil_awvalid,
    output logic                          s_axil_awready,
    input  logic [31:0]                   s_axil_wdata,
    input  logic [3:0]                    s_axil_wstrb,
    input  logic                          s_axil_wvalid,
    output logic                          s_axil_wready,
    output logic [1:0]                    s_axil_bresp,
    output logic                          s_axil_bvalid,
    input  logic                          s_axil_bready,
    input  logic [11:0]                   s_axil_araddr,
    input  logic [2:0]                    s_axil_arprot,
    input  logic                          s_axil_arvalid,
    output logic                          s_axil_arready,
    output logic [31:0]                   s_axil_rdata,
    output logic [1:0]                    s_axil_rresp,
    output logic                          s_axil_rvalid,
    input  logic                          s_axil_rready,
    // commands: register writes (accllm.sim.engine_regs)
    input  logic [63:0]                   s_axis_cmd_tdata,
    input  logic                          s_axis_cmd_tvalid,
    output logic                          s_axis_cmd_tready,
    input  logic                          s_axis_cmd_tlast,
    // activations
    input  logic [8*LANES-1:0]            s_axis_act_tdata,
    input  logic                          s_axis_act_tvalid,
    output logic                          s_axis_act_tready,
    input  logic                          s_axis_act_tlast,
    // results, one stream per channel
    output logic [CHANNELS*48*CORES-1:0]  m_axis_tdata,
    output logic [CHANNELS-1:0]           m_axis_tvalid,
    input  logic [CHANNELS-1:0]           m_axis_tready,
    output logic [CHANNELS-1:0]           m_axis_tlast,
    // AXI4 read masters, one per channel
    output logic [CHANNELS*ADDR_W-1:0]    m_axi_araddr,
    output logic [CHANNELS*8-1:0]         m_axi_arlen,
    output logic [CHANNELS*3-1:0]         m_axi_arsize,
    output logic [CHANNELS*2-1:0]         m_axi_arburst,
    output logic [CHANNELS*4-1:0]         m_axi_arcache,
    output logic [CHANNELS*3-1:0]         m_axi_arprot,
    output logic [CHANNELS-1:0]           m_axi_arid,
    output logic [CHANNELS-1:0]           m_axi_arvalid,
    input  logic [CHANNELS-1:0]           m_axi_arready,
    input  logic [CHANNELS*W-1:0]         m_axi_rdata,
    input  logic [CHANNELS*2-1:0]         m_axi_rresp,
    input  logic [CHANNELS-1:0]           m_axi_rlast,
    input  logic [CHANNELS-1:0]           m_axi_rid,
    input  logic [CHANNELS-1:0]           m_axi_rvalid,
    output logic [CHANNELS-1:0]           m_axi_rready
);
    // ---------------- registers ----------------
    logic [1:0] mode;
    logic [3:0] wbits;
    logic [7:0] nt;
    logic [31:0] k, cycles;
    logic [ADDR_W-1:0] base [CHANNELS];
    logic [ADDR_W-1:0] region [CHANNELS];
    logic [ADDR_W-1:0] addr0 [CHANNELS];  // region + base, registered (the reader latches it cycles after start)
    logic [31:0] rows [CHANNELS];
    logic [31:0] words_read [CHANNELS];
    logic [CHANNELS-1:0] ch_done;
    logic busy, done, start;

    // AXI4-Lite write: address and data may arrive in either order
    logic aw_have, w_have;
    logic [11:0] aw_q;
    logic [31:0] w_q;
    logic do_write;
    // the one register-write port: an AXI4-Lite write, else a command beat
    logic wr_en, cmd_fire, cmd_start, act_enough;
    logic [11:0] wr_addr;
    logic [31:0] wr_data;
    logic [7:0] act_vec;

    assign s_axil_awready = !aw_have && !s_axil_bvalid;
    assign s_axil_wready = !w_have && !s_axil_bvalid;
    assign s_axil_bresp = 2'b00;
    assign do_write = aw_have && w_have && !s_axil_bvalid;
    assign cmd_start = s_axis_cmd_tdata[11:0] == 12'h000 && s_axis_cmd_tdata[32];
    // vectors the operation needs before a command-stream start: NT for DENSE/SPARSE (at most T), one for QK/PV
    logic [7:0] act_need;
    assign act_need = mode[1] || nt == 8'd0 ? 8'd1 : (nt > 8'(T) ? 8'(T) : nt);
    assign act_enough = act_vec >= act_need;
    assign s_axis_cmd_tready = !busy && !do_write && (!cmd_start || act_enough);
    assign cmd_fire = s_axis_cmd_tvalid && s_axis_cmd_tready;
    assign wr_en = do_write || cmd_fire;
    assign wr_addr = do_write ? aw_q : s_axis_cmd_tdata[11:0];
    assign wr_data = do_write ? w_q : s_axis_cmd_tdata[63:32];
    assign start = wr_en && wr_addr == 12'h000 && wr_data[0] && !busy;

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            aw_have <= 1'b0;
            w_have <= 1'b0;
            s_axil_bvalid <= 1'b0;
            mode <= 2'd0;
            wbits <= 4'd2;
            nt <= 8'd1;
            k <= '0;
            for (int ch = 0; ch < CHANNELS; ch++) begin
                base[ch] <= '0;
                rows[ch] <= '0;
                region[ch] <= '0;
            end
        end else begin
            if (s_axil_awvalid && s_axil_awready) begin
                aw_have <= 1'b1;
                aw_q <= s_axil_awaddr;
            end
            if (s_axil_wvalid && s_axil_wready) begin
                w_have <= 1'b1;
                w_q <= s_axil_wdata;
            end
            if (do_write) begin
                aw_have <= 1'b0;
                w_have <= 1'b0;
                s_axil_bvalid <= 1'b1;
            end
            if (wr_en) begin
                case (wr_addr)
                    12'h004: begin
                        mode <= wr_data[1:0];
                        wbits <= wr_data[7:4];
                    end
                    12'h008: k <= wr_data;
                    12'h01C: nt <= wr_data[7:0];
                    default: ;
                endcase
                for (int ch = 0; ch < CHANNELS; ch++) begin
                    if (wr_addr == 12'(256 + 16 * ch)) base[ch][31:0] <= wr_data;
                    if (wr_addr == 12'(256 + 16 * ch + 4)) base[ch][ADDR_W-1:32] <= (ADDR_W - 32)'(wr_data);
                    if (wr_addr == 12'(256 + 16 * ch + 8)) rows[ch] <= wr_data;
                    if (wr_addr == 12'(2048 + 8 * ch)) region[ch][31:0] <= wr_data;
                    if (wr_addr == 12'(2048 + 8 * ch + 4)) region[ch][ADDR_W-1:32] <= (ADDR_W - 32)'(wr_data);
                end
            end
            if (s_axil_bvalid && s_axil_bready) s_axil_bvalid <= 1'b0;
        end
    end

    // AXI4-Lite read
    logic [31:0] rd_value;
    always_comb begin
        rd_value = 32'd0;
        case (s_axil_araddr)
            12'h000: rd_value = {30'd0, done, busy};
            12'h004: rd_value = {24'd0, wbits, 2'd0, mode};
            12'h008: rd_value = k;
            12'h00C: rd_value = cycles;
            12'h010: rd_value = {4'($clog2(W / 128)), 4'(WBITS), 8'(LANES), 8'(CORES), 8'(CHANNELS)};
            12'h014: rd_value = 32'(GROUP);
            12'h018: rd_value = 32'(K_MAX);
            12'h01C: rd_value = {24'd0, nt};
            12'h020: rd_value = 32'(T);
            default: ;
        endcase
        for (int ch = 0; ch < CHANNELS; ch++) begin
            if (s_axil_araddr == 12'(256 + 16 * ch)) rd_value = base[ch][31:0];
            if (s_axil_araddr == 12'(256 + 16 * ch + 4)) rd_value = 32'(base[ch] >> 32);
            if (s_axil_araddr == 12'(256 + 16 * ch + 8)) rd_value = rows[ch];
            if (s_axil_araddr == 12'(256 + 16 * ch + 12)) rd_value = words_read[ch];
            if (s_axil_araddr == 12'(2048 + 8 * ch)) rd_value = region[ch][31:0];
            if (s_axil_araddr == 12'(2048 + 8 * ch + 4)) rd_value = 32'(region[ch] >> 32);
        end
    end

    assign s_axil_arready = !s_axil_rvalid;
    assign s_axil_rresp = 2'b00;
    always_ff @(posedge clk) begin
        if (!rst_n) s_axil_rvalid <= 1'b0;
        else if (s_axil_arvalid && s_axil_arready) begin
            s_axil_rvalid <= 1'b1;
            s_axil_rdata <= rd_value;
        end else if (s_axil_rready) s_axil_rvalid <= 1'b0;
    end

    // ---------------- run state and cycle counter ----------------
    always_ff @(posedge clk) begin
        if (!rst_n) begin
            busy <= 1'b0;
            done <= 1'b0;
            cycles <= '0;
        end else if (start) begin
            busy <= 1'b1;
            done <= 1'b0;
            cycles <= '0;
        end else if (busy) begin
            cycles <= cycles + 1;
            if (&ch_done) begin
                busy <= 1'b0;
                done <= 1'b1;
            end
        end
    end

    // ---------------- activations: broadcast into every channel's RAM ----------------
    // Chunk c of vector v goes to bank entry v * ACT_BANK + c / 2 of the even (c even) or odd bank.
    localparam int ACT_BANK = (K_MAX / LANES + 1) / 2;
    logic [31:0] act_ptr, act_vbase;
    logic act_in, act_we;
    assign s_axis_act_tready = !busy;
    assign act_in = s_axis_act_tvalid && s_axis_act_tready;
    assign act_we = act_in && act_vec < 8'(T);
    always_ff @(posedge clk) begin
        if (!rst_n || start) begin
            act_ptr <= '0;
            act_vec <= '0;
            act_vbase <= '0;
        end else if (act_in) begin
            act_ptr <= s_axis_act_tlast ? '0 : act_ptr + 1;
            if (s_axis_act_tlast && act_vec < 8'(T)) begin
                act_vec <= act_vec + 1'b1;
                act_vbase <= act_vbase + 32'(ACT_BANK);
            end
        end
    end

    always_ff @(posedge clk)
        for (int ch = 0; ch < CHANNELS; ch++) addr0[ch] <= region[ch] + base[ch];

    // ---------------- channels ----------------
    for (genvar ch = 0; ch < CHANNELS; ch++) begin : g_ch
        accllm_engine_channel #(
            .W(W), .ADDR_W(ADDR_W), .BURST(BURST), .FIFO_DEPTH(FIFO_DEPTH), .CORES(CORES), .LANES(LANES),
            .GROUP(GROUP), .WBITS(WBITS), .K_MAX(K_MAX), .T(T), .OUT_DEPTH(OUT_DEPTH)
        ) u_ch (
            .clk(clk), .rst_n(rst_n),
            .start(start), .mode(mode), .wb4(wbits == 4'd4), .nt(nt), .k(k), .rows(rows[ch]), .base(addr0[ch]),
            .done(ch_done[ch]), .words_read(words_read[ch]),
            .act_we(act_we), .act_addr(act_vbase + (act_ptr >> 1)), .act_odd_w(act_ptr[0]),
            .act_data(s_axis_act_tdata),
            .m_valid(m_axis_tvalid[ch]), .m_ready(m_axis_tready[ch]),
            .m_data(m_axis_tdata[ch*48*CORES +: 48*CORES]), .m_last(m_axis_tlast[ch]),
            .araddr(m_axi_araddr[ch*ADDR_W +: ADDR_W]), .arlen(m_axi_arlen[ch*8 +: 8]),
            .arsize(m_axi_arsize[ch*3 +: 3]), .arburst(m_axi_arburst[ch*2 +: 2]),
            .arcache(m_axi_arcache[ch*4 +: 4]), .arprot(m_axi_arprot[ch*3 +: 3]), .arid(m_axi_arid[ch]),
            .arvalid(m_axi_arvalid[ch]), .arready(m_axi_arready[ch]),
            .rdata(m_axi_rdata[ch*W +: W]), .rresp(m_axi_rresp[ch*2 +: 2]), .rlast(m_axi_rlast[ch]),
            .rid(m_axi_rid[ch]), .rvalid(m_axi_rvalid[ch]), .rready(m_axi_rready[ch])
        );
    end

    logic unused;
    assign unused = ^{s_axil_awprot, s_axil_arprot, s_axil_wstrb, s_axis_cmd_tlast, s_axis_cmd_tdata[31:12]};
endmodule
