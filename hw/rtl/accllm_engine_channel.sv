// accllm_engine_channel: one memory channel of the engine: an AXI4 burst reader, the unpacker of the weight
// stream (accllm.sim.weight_stream: records laid end to end as a bit stream over whole W-bit words) and CORES
// cores that consume one super-record (one record per core) together, all fed the same activation chunk.
//
//   setup (4 registered stages: tiles, super-records, bits, words of the section; no wide combinational path
//          from the registers to the reader)
//   reader -> word FIFO -> gearbox (words in, super-records of CORES*R bits out, R set by mode and code width)
//          -> expander (E0: the record's fields for one core beat, per core and lane: code, zero, 2:4 position;
//                       activation RAM read)
//          -> E1: operands a = activation (2:4: picked by position), b = code - zero
//          -> CORES x accllm_mac -> output FIFO (one beat per closed accumulation: CORES accumulators + scales)
//
// Block mode (prefill): the activation RAM holds up to T vectors. In DENSE/SPARSE a held super-record is issued
// once per vector, vector 0 first (its beats_per_record core beats, then vector 1's, ...), so one weight pass
// serves nt vectors and each record closes nt accumulations: nt output beats per super-record, in vector order.
// The cores are time-multiplexed over the held record: no extra multiplier, nt times the core beats per record,
// 1/nt of the memory words per core beat. QK/PV always run one vector (nt is taken as 1).
//
// A beat is admitted only when the output FIFO can hold every result in flight, so the datapath never stalls;
// the reader keeps as many bursts in flight as its FIFO has room for. Core c owns row tile*CORES + c.
module accllm_engine_channel #(
    parameter int W = 256,
    parameter int ADDR_W = 64,
    parameter int BURST = 64,
    parameter int FIFO_DEPTH = 256,
    parameter int CORES = 4,
    parameter int LANES = 16,
    parameter int GROUP = 32,
    parameter int WBITS = 4,      // widest weight code the build decodes: 2 (W2 only) or 4 (W2 and W4)
    parameter int K_MAX = 4096,   // longest reduction (activation RAM holds T x K_MAX int8 values)
    parameter int T = 1,          // activation vectors held for block mode
    parameter int OUT_DEPTH = 8
) (
    input  logic                    clk,
    input  logic                    rst_n,
    // control (held stable from start to done)
    input  logic                    start,
    input  logic [1:0]              mode,
    input  logic                    wb4,          // this operation's codes are 4 bits (else 2)
    input  logic [7:0]              nt,           // vectors of this operation, 1..T (DENSE/SPARSE)
    input  logic [31:0]             k,
    input  logic [31:0]             rows,         // < 2^24
    input  logic [ADDR_W-1:0]       base,
    output logic                    done,
    output logic [31:0]             words_read,
    // activation writes (L int8 values per chunk): bank address (vector * ACT_BANK + chunk / 2), chunk parity
    input  logic                    act_we,
    input  logic [31:0]             act_addr,
    input  logic                    act_odd_w,
    input  logic [8*LANES-1:0]      act_data,
    // results
    output logic                    m_valid,
    input  logic                    m_ready,
    output logic [48*CORES-1:0]     m_data,
    output logic                    m_last,
    // AXI4 read master
    output logic [ADDR_W-1:0]       araddr,
    output logic [7:0]              arlen,
    output logic [2:0]              arsize,
    output logic [1:0]              arburst,
    output logic [3:0]              arcache,
    output logic [2:0]              arprot,
    output logic                    arid,
    output logic                    arvalid,
    input  logic                    arready,
    input  logic [W-1:0]            rdata,
    input  logic [1:0]              rresp,
    input  logic                    rlast,
    input  logic                    rid,
    input  logic                    rvalid,
    output logic                    rready
);
    localparam logic [1:0] DENSE = 2'd0, SPARSE = 2'd1, QK = 2'd2;  // PV = 2'd3 is every default branch
    // record bits per mode and code width (accllm.sim.weight_stream.StreamFormat.record_bits)
    localparam int R_D2 = 16 + 2 + GROUP * 2;
    localparam int R_S2 = 16 + 2 + GROUP + 3 * GROUP / 4;
    localparam int R_D4 = 16 + 4 + GROUP * 4;
    localparam int R_S4 = 16 + 4 + GROUP * 2 + 3 * GROUP / 4;
    localparam int R_Q = 4 + 4 * LANES;
    localparam int R_P = 8 * LANES;
    localparam int R_W = WBITS >= 4 ? R_D4 : R_D2;  // longest DENSE/SPARSE record of the build (R_D >= R_S)
    localparam int R_QP = R_Q > R_P ? R_Q : R_P;
    localparam int R_MAX = R_W > R_QP ? R_W : R_QP;
    localparam int S_MAX = CORES * R_MAX;
    localparam int BUFW = S_MAX + W;            // gearbox: whenever a super-record is short, a word fits
    localparam int CNTW = $clog2(BUFW + 1);
    localparam int BPR_D = GROUP / LANES;       // core beats per record
    localparam int BPR_S = GROUP / (2 * LANES);
    localparam int BIW = BPR_D > 1 ? $clog2(BPR_D) : 1;
    localparam int ACT_BANK = (K_MAX / LANES + 1) / 2;  // entries per vector in each bank
    localparam int ACT_DEPTH = T * ACT_BANK;
    localparam int ABW = ACT_DEPTH > 1 ? $clog2(ACT_DEPTH) : 1;
    localparam int TW = T > 1 ? $clog2(T) : 1;
    localparam int OCW = $clog2(OUT_DEPTH + 1);
    localparam int OUTW = 48 * CORES;
    // tiles = ceil(rows / CORES) as a multiply by a reciprocal: exact for rows < 2^24 (24 + 7 fraction bits,
    // CORES <= 128), so the setup has no divider
    localparam int RSH = 31;
    localparam longint RECIP = ((64'd1 << RSH) + 64'(CORES) - 1) / 64'(CORES);

    if (WBITS != 2 && WBITS != 4) begin : g_bad_wbits
        $error("accllm_engine_channel: WBITS must be 2 or 4");
    end
    if ((LANES & (LANES - 1)) != 0 || LANES < 4 || (GROUP & (GROUP - 1)) != 0 || GROUP < 2 * LANES) begin : g_bad_shape
        $error("accllm_engine_channel: LANES and GROUP must be powers of two, LANES >= 4, GROUP >= 2*LANES");
    end
    if (OUT_DEPTH < 6) begin : g_bad_depth
        $error("accllm_engine_channel: OUT_DEPTH must be at least 6 (4 results in flight + full rate)");
    end
    if (T < 1 || T > 255 || CORES > 128) begin : g_bad_t
        $error("accllm_engine_channel: T must be 1..255 and CORES at most 128");
    end

    // ---------------- operation setup: registered stages ----------------
    logic w_mode, running, wb4_r, go;
    logic [1:0] mode_r;
    logic [3:0] setup;                          // one-hot stage of the setup after start
    logic [7:0] nt_r;                           // vectors (1 in QK/PV)
    logic [31:0] k_r, rows_r, rpr, rows_up;
    logic [23:0] tiles;
    logic [39:0] nsr, out_total;
    logic [47:0] sbits;
    logic [31:0] words_in;
    logic [15:0] rec_bits;
    logic [31:0] sr_pop_left, words_left, rec_iss_left, out_left;
    logic [TW-1:0] nt_last;

    assign w_mode = (mode_r == DENSE) || (mode_r == SPARSE);
    assign rows_up = rows_r + 32'(CORES - 1);
    always_comb begin
        case (mode_r)
            DENSE:   rec_bits = 16'(wb4_r ? CORES * R_D4 : CORES * R_D2);
            SPARSE:  rec_bits = 16'(wb4_r ? CORES * R_S4 : CORES * R_S2);
            QK:      rec_bits = 16'(CORES * R_Q);
            default: rec_bits = 16'(CORES * R_P);
        endcase
    end

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            setup <= '0;
            go <= 1'b0;
        end else begin
            setup <= {setup[2:0], start};
            go <= setup[3];
        end
        if (start) begin
            mode_r <= mode;
            wb4_r <= (WBITS >= 4) && wb4 && (mode == DENSE || mode == SPARSE);
            nt_r <= (mode == DENSE || mode == SPARSE) ? ((nt == 0) ? 8'd1 : (nt > 8'(T) ? 8'(T) : nt)) : 8'd1;
            k_r <= k;
            rows_r <= rows;
        end
        if (setup[0]) begin
            rpr <= w_mode ? (k_r >> $clog2(GROUP)) : (k_r >> $clog2(LANES));
            tiles <= 24'((64'(rows_up[23:0]) * 64'(RECIP)) >> RSH);
        end
        if (setup[1]) nsr <= 40'(tiles) * 40'(rpr[15:0]);
        if (setup[2]) begin
            sbits <= 48'(nsr) * 48'(rec_bits);
            out_total <= w_mode ? nsr * 40'(nt_r) : 40'(tiles);
        end
        if (setup[3]) words_in <= 32'((sbits + 48'(W - 1)) >> $clog2(W));
    end
    assign nt_last = TW'(nt_r - 8'd1);

    // ---------------- reader ----------------
    logic w_valid, w_take;
    logic [W-1:0] w_data;

    accllm_axi_reader #(.W(W), .ADDR_W(ADDR_W), .BURST(BURST), .FIFO_DEPTH(FIFO_DEPTH)) u_reader (
        .clk(clk), .rst_n(rst_n), .start(go), .base(base), .words(words_in),
        .m_valid(w_valid), .m_ready(w_take), .m_data(w_data), .words_read(words_read),
        .araddr(araddr), .arlen(arlen), .arsize(arsize), .arburst(arburst), .arcache(arcache), .arprot(arprot),
        .arid(arid), .arvalid(arvalid), .arready(arready),
        .rdata(rdata), .rresp(rresp), .rlast(rlast), .rid(rid), .rvalid(rvalid), .rready(rready)
    );

    // ---------------- gearbox: words -> super-records ----------------
    logic [BUFW-1:0] gbuf, gbuf_shifted;
    logic [CNTW-1:0] gcnt, gcnt_after, s_bits;
    logic sr_avail, sr_pop, exp_ready;

    always_comb begin
        case (mode_r)
            DENSE: begin
                s_bits = CNTW'(wb4_r ? CORES * R_D4 : CORES * R_D2);
                gbuf_shifted = wb4_r ? gbuf >> (CORES * R_D4) : gbuf >> (CORES * R_D2);
            end
            SPARSE: begin
                s_bits = CNTW'(wb4_r ? CORES * R_S4 : CORES * R_S2);
                gbuf_shifted = wb4_r ? gbuf >> (CORES * R_S4) : gbuf >> (CORES * R_S2);
            end
            QK: begin s_bits = CNTW'(CORES * R_Q); gbuf_shifted = gbuf >> (CORES * R_Q); end
            default: begin s_bits = CNTW'(CORES * R_P); gbuf_shifted = gbuf >> (CORES * R_P); end
        endcase
    end

    assign sr_avail = running && (sr_pop_left != 0) && (gcnt >= s_bits);
    assign sr_pop = sr_avail && exp_ready;
    assign gcnt_after = sr_pop ? gcnt - s_bits : gcnt;
    assign w_take = running && w_valid && (words_left != 0) && (32'(gcnt_after) + W <= BUFW);

    always_ff @(posedge clk) begin
        if (!rst_n || start) begin
            gbuf <= '0;
            gcnt <= '0;
        end else begin
            gbuf <= (sr_pop ? gbuf_shifted : gbuf) | (w_take ? (BUFW'(w_data) << gcnt_after) : '0);
            gcnt <= gcnt_after + (w_take ? CNTW'(W) : '0);
        end
    end

    // ---------------- expander E0: one core beat of the current super-record, for vector tv ----------------
    logic [S_MAX-1:0] cur;
    logic cur_v, issue, beat_end, tv_end, room;
    logic [BIW-1:0] beat, beat_last;
    logic [TW-1:0] tv;           // vector of this beat
    logic [ABW-1:0] tv_base;     // tv * ACT_BANK
    logic [31:0] rr;             // record index along the row
    logic [31:0] chunk;          // activation chunk (LANES values) of this beat, inside its vector
    logic close0, last0;
    logic [OCW-1:0] out_count;
    logic [2:0] mac_inflight;
    logic e_v, e_close, e_last, e_odd;

    assign beat_last = (mode_r == DENSE) ? BIW'(BPR_D - 1) : (mode_r == SPARSE) ? BIW'(BPR_S - 1) : '0;
    assign beat_end = (beat == beat_last);
    assign tv_end = (tv == nt_last);
    assign room = (32'(out_count) + 32'(mac_inflight) + 32'(e_v & e_close)) < OUT_DEPTH;
    assign issue = cur_v && room;
    assign exp_ready = !cur_v || (issue && beat_end && tv_end);
    assign close0 = beat_end && (w_mode || rr == rpr - 1);
    assign last0 = close0 && (rec_iss_left == 1);

    always_comb begin
        case (mode_r)
            DENSE:   chunk = rr * BPR_D + 32'(beat);
            SPARSE:  chunk = (rr * BPR_S + 32'(beat)) * 2;
            default: chunk = rr;
        endcase
    end

    always_ff @(posedge clk) begin
        if (!rst_n || start) begin
            cur_v <= 1'b0;
            beat <= '0;
            tv <= '0;
            tv_base <= '0;
            rr <= '0;
        end else begin
            if (sr_pop) cur <= gbuf[S_MAX-1:0];
            if (exp_ready) cur_v <= sr_pop;
            if (issue) begin
                beat <= beat_end ? '0 : beat + 1'b1;
                if (beat_end) begin
                    tv <= tv_end ? '0 : tv + 1'b1;
                    tv_base <= tv_end ? '0 : tv_base + ABW'(ACT_BANK);
                    if (tv_end) rr <= (rr == rpr - 1) ? '0 : rr + 1;
                end
            end
        end
    end

    // activation RAM: two banks (even / odd chunks) so a 2:4 beat reads 2*LANES values at once; vector t's
    // chunks at bank entries t * ACT_BANK + chunk / 2
    logic [8*LANES-1:0] act_even [ACT_DEPTH];
    logic [8*LANES-1:0] act_odd [ACT_DEPTH];
    logic [8*LANES-1:0] ev_q, od_q;
    logic [16*LANES-1:0] act2;  // a 2:4 beat's 2*LANES values (chunks 2j, 2j+1)
    logic [ABW-1:0] rd_addr;
    assign act2 = {od_q, ev_q};
    assign rd_addr = tv_base + ABW'(chunk >> 1);

    always_ff @(posedge clk) begin
        if (act_we && !act_odd_w) act_even[ABW'(act_addr)] <= act_data;
        if (act_we && act_odd_w) act_odd[ABW'(act_addr)] <= act_data;
        ev_q <= act_even[rd_addr];
        od_q <= act_odd[rd_addr];
    end

    always_ff @(posedge clk) begin
        if (!rst_n || start) e_v <= 1'b0;
        else e_v <= issue;
        e_close <= close0;
        e_last <= last0;
        e_odd <= chunk[0];
    end

    // ---------------- per core: record fields (E0), operands (E1), MAC ----------------
    logic [CORES-1:0] push_c;
    logic signed [31:0] acc_c [CORES];
    logic [16:0] tag_c [CORES];

    for (genvar c = 0; c < CORES; c++) begin : g_core
        logic [R_D2-1:0] rec_d;
        logic [R_S2-1:0] rec_s;
        logic [R_Q-1:0] rec_q;
        logic [R_P-1:0] rec_p;
        logic [LANES-1:0][3:0] code0, zero0, code1, zero1, code4, zero4;
        logic [LANES-1:0][2:0] pat4;
        logic [LANES-1:0][1:0] pos0, pos1;
        logic [15:0] scale0, scale1, scale4;
        logic signed [7:0] a_op [LANES];
        logic signed [4:0] b_op [LANES];

        assign rec_d = cur[c*R_D2 +: R_D2];
        assign rec_s = cur[c*R_S2 +: R_S2];
        assign rec_q = cur[c*R_Q +: R_Q];
        assign rec_p = cur[c*R_P +: R_P];

        // 4-bit code fields, only in builds that decode them
        if (WBITS >= 4) begin : g_w4
            logic [R_D4-1:0] rec_d4;
            logic [R_S4-1:0] rec_s4;
            assign rec_d4 = cur[c*R_D4 +: R_D4];
            assign rec_s4 = cur[c*R_S4 +: R_S4];
            assign scale4 = (mode_r == SPARSE) ? rec_s4[15:0] : rec_d4[15:0];
            for (genvar l = 0; l < LANES; l++) begin : g_lane4
                assign code4[l] = (mode_r == SPARSE) ? rec_s4[20 + (int'(beat) * LANES + l) * 4 +: 4]
                                                     : rec_d4[20 + (int'(beat) * LANES + l) * 4 +: 4];
                assign zero4[l] = (mode_r == SPARSE) ? rec_s4[16 +: 4] : rec_d4[16 +: 4];
                assign pat4[l] = rec_s4[20 + GROUP * 2 + 3 * (int'(beat) * (LANES / 2) + l / 2) +: 3];
            end
        end else begin : g_no_w4
            assign code4 = '0;
            assign zero4 = '0;
            assign pat4 = '0;
            assign scale4 = '0;
        end

        assign scale0 = !w_mode ? 16'd0 : wb4_r ? scale4 : (mode_r == DENSE) ? rec_d[15:0] : rec_s[15:0];

        for (genvar l = 0; l < LANES; l++) begin : g_lane
            logic [2:0] pat;
            assign pat = wb4_r ? pat4[l] : rec_s[18 + GROUP + 3 * (int'(beat) * (LANES / 2) + l / 2) +: 3];
            always_comb begin
                pos0[l] = 2'd0;
                case (mode_r)
                    DENSE: begin
                        code0[l] = wb4_r ? code4[l] : 4'(rec_d[18 + (int'(beat) * LANES + l) * 2 +: 2]);
                        zero0[l] = wb4_r ? zero4[l] : 4'(rec_d[16 +: 2]);
                    end
                    SPARSE: begin
                        code0[l] = wb4_r ? code4[l] : 4'(rec_s[18 + (int'(beat) * LANES + l) * 2 +: 2]);
                        zero0[l] = wb4_r ? zero4[l] : 4'(rec_s[16 +: 2]);
                        // 2:4 pattern index -> the lane's position in its block (first or second kept weight)
                        case (pat)
                            3'd0: pos0[l] = (l % 2 == 0) ? 2'd0 : 2'd1;
                            3'd1: pos0[l] = (l % 2 == 0) ? 2'd0 : 2'd2;
                            3'd2: pos0[l] = (l % 2 == 0) ? 2'd0 : 2'd3;
                            3'd3: pos0[l] = (l % 2 == 0) ? 2'd1 : 2'd2;
                            3'd4: pos0[l] = (l % 2 == 0) ? 2'd1 : 2'd3;
                            default: pos0[l] = (l % 2 == 0) ? 2'd2 : 2'd3;
                        endcase
                    end
                    QK: begin
                        code0[l] = rec_q[4 + 4 * l +: 4];
                        zero0[l] = rec_q[3:0];
                    end
                    default: begin
                        code0[l] = rec_p[4 * l +: 4];
                        zero0[l] = rec_p[4 * LANES + 4 * l +: 4];
                    end
                endcase
            end

            // E1: operands
            logic [7:0] a_sel;
            always_comb begin
                if (mode_r == SPARSE) a_sel = act2[8 * (4 * (l / 2) + int'(pos1[l])) +: 8];
                else a_sel = e_odd ? od_q[8 * l +: 8] : ev_q[8 * l +: 8];
            end
            assign a_op[l] = a_sel;
            assign b_op[l] = $signed({1'b0, code1[l]}) - $signed({1'b0, zero1[l]});
        end

        always_ff @(posedge clk) begin
            code1 <= code0;
            zero1 <= zero0;
            pos1 <= pos0;
            scale1 <= scale0;
        end

        logic [2:0] inflight_c;
        accllm_mac #(.LANES(LANES), .TAG_W(17)) u_mac (
            .clk(clk), .rst_n(rst_n && !start), .in_valid(e_v), .in_close(e_close), .in_tag({e_last, scale1}),
            .a_op(a_op), .b_op(b_op), .out_valid(push_c[c]), .out_acc(acc_c[c]), .out_tag(tag_c[c]),
            .inflight(inflight_c)
        );
        if (c == 0) begin : g_inflight
            assign mac_inflight = inflight_c;
        end else begin : g_lockstep  // every core runs the same beats: core 0 speaks for all
            logic unused_c;
            assign unused_c = ^inflight_c;
        end
    end

    // ---------------- output FIFO ----------------
    logic [OUTW:0] push_word, out_word;
    always_comb begin
        push_word[OUTW] = tag_c[0][16];
        for (int c = 0; c < CORES; c++) begin
            push_word[32 * c +: 32] = acc_c[c];
            push_word[32 * CORES + 16 * c +: 16] = tag_c[c][15:0];
        end
    end

    accllm_out_fifo #(.WIDTH(OUTW + 1), .DEPTH(OUT_DEPTH)) u_out (
        .clk(clk), .rst_n(rst_n && !start),
        .push(push_c[0]), .push_data(push_word),
        .m_valid(m_valid), .m_ready(m_ready), .m_data(out_word), .count(out_count)
    );
    assign m_data = out_word[OUTW-1:0];
    assign m_last = out_word[OUTW];

    // ---------------- progress counters ----------------
    always_ff @(posedge clk) begin
        if (!rst_n) begin
            running <= 1'b0;
            done <= 1'b0;
            sr_pop_left <= '0;
            words_left <= '0;
            rec_iss_left <= '0;
            out_left <= '0;
        end else if (start) begin
            running <= 1'b0;
            done <= 1'b0;
        end else if (go) begin
            running <= 1'b1;
            sr_pop_left <= 32'(nsr);
            words_left <= words_in;
            rec_iss_left <= 32'(out_total);
            out_left <= 32'(out_total);
        end else begin
            if (sr_pop) sr_pop_left <= sr_pop_left - 1;
            if (w_take) words_left <= words_left - 1;
            if (issue && close0) rec_iss_left <= rec_iss_left - 1;
            if (m_valid && m_ready) out_left <= out_left - 1;
            if (running && out_left == 0) begin
                running <= 1'b0;
                done <= 1'b1;
            end
        end
    end

    logic unused;
    assign unused = ^{push_c, mac_inflight, k_r, rows_up[31:24], rpr[31:16], nsr[39:32], out_total[39:32], act_addr};
endmodule
