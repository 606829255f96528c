// accllm_engine_channel: one memory channel of the engine: an AXI4 burst reader, the unpacker of the weight
// stream (accllm.sim.weight_stream: records laid end to end as a bit stream over whole W-bit words) and CORES
// cores that consume one super-record (one record per core) together, all fed the same activation chunk.
//
//   reader -> word FIFO -> gearbox (words in, super-records of CORES*R bits out, R set by the mode)
//          -> expander (E0: the record's fields for one core beat, per core and lane: code, zero, 2:4 position;
//                       activation RAM read)
//          -> E1: operands a = activation (2:4: picked by position), b = code - zero
//          -> CORES x accllm_mac -> output FIFO (one beat per closed super-record: CORES accumulators + scales)
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
    parameter int WBITS = 2,
    parameter int K_MAX = 4096,   // longest reduction (activation RAM holds K_MAX int8 values)
    parameter int OUT_DEPTH = 8
) (
    input  logic                    clk,
    input  logic                    rst_n,
    // control (held stable from start to done)
    input  logic                    start,
    input  logic [1:0]              mode,
    input  logic [31:0]             k,
    input  logic [31:0]             rows,
    input  logic [ADDR_W-1:0]       base,
    output logic                    done,
    output logic [31:0]             words_read,
    // activation writes (L int8 values per chunk)
    input  logic                    act_we,
    input  logic [31:0]             act_chunk,
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
    // record bits per mode (accllm.sim.weight_stream.StreamFormat.record_bits)
    localparam int R_D = 16 + WBITS + GROUP * WBITS;
    localparam int R_S = 16 + WBITS + GROUP * WBITS / 2 + 3 * GROUP / 4;
    localparam int R_Q = 4 + 4 * LANES;
    localparam int R_P = 8 * LANES;
    localparam int R_DS = R_D > R_S ? R_D : R_S;
    localparam int R_QP = R_Q > R_P ? R_Q : R_P;
    localparam int R_MAX = R_DS > R_QP ? R_DS : R_QP;
    localparam int S_MAX = CORES * R_MAX;
    localparam int BUFW = S_MAX + W;            // gearbox: whenever a super-record is short, a word fits
    localparam int CNTW = $clog2(BUFW + 1);
    localparam int BPR_D = GROUP / LANES;       // core beats per record
    localparam int BPR_S = GROUP / (2 * LANES);
    localparam int BIW = BPR_D > 1 ? $clog2(BPR_D) : 1;
    localparam int ACT_BANK = (K_MAX / LANES + 1) / 2;
    localparam int ABW = ACT_BANK > 1 ? $clog2(ACT_BANK) : 1;
    localparam int OCW = $clog2(OUT_DEPTH + 1);
    localparam int OUTW = 48 * CORES;

    if (WBITS != 2 && WBITS != 4) begin : g_bad_wbits
        $error("accllm_engine_channel: WBITS must be 2 or 4");
    end
    if ((LANES & (LANES - 1)) != 0 || LANES < 4 || (GROUP & (GROUP - 1)) != 0 || GROUP < 2 * LANES) begin : g_bad_shape
        $error("accllm_engine_channel: LANES and GROUP must be powers of two, LANES >= 4, GROUP >= 2*LANES");
    end
    if (OUT_DEPTH < 6) begin : g_bad_depth
        $error("accllm_engine_channel: OUT_DEPTH must be at least 6 (4 results in flight + full rate)");
    end

    // ---------------- operation setup ----------------
    logic w_mode, running;
    logic [1:0] mode_r;
    logic [31:0] rpr_in, tiles_in, rpr;        // records per row, row tiles
    logic [63:0] nsr_in, bits_in;
    logic [31:0] words_in, out_total_in;
    logic [31:0] sr_pop_left, words_left, rec_iss_left, out_left;

    assign w_mode = (mode_r == DENSE) || (mode_r == SPARSE);
    assign rpr_in = (mode == DENSE || mode == SPARSE) ? (k >> $clog2(GROUP)) : (k >> $clog2(LANES));
    assign tiles_in = (rows + 32'(CORES - 1)) / 32'(CORES);
    assign nsr_in = 64'(tiles_in) * 64'(rpr_in);
    always_comb begin
        case (mode)
            DENSE:   bits_in = nsr_in * 64'(CORES * R_D);
            SPARSE:  bits_in = nsr_in * 64'(CORES * R_S);
            QK:      bits_in = nsr_in * 64'(CORES * R_Q);
            default: bits_in = nsr_in * 64'(CORES * R_P);
        endcase
    end
    assign words_in = 32'((bits_in + 64'(W - 1)) >> $clog2(W));
    assign out_total_in = (mode == DENSE || mode == SPARSE) ? 32'(nsr_in) : tiles_in;

    // ---------------- reader ----------------
    logic w_valid, w_take;
    logic [W-1:0] w_data;

    accllm_axi_reader #(.W(W), .ADDR_W(ADDR_W), .BURST(BURST), .FIFO_DEPTH(FIFO_DEPTH)) u_reader (
        .clk(clk), .rst_n(rst_n), .start(start), .base(base), .words(words_in),
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
            DENSE: begin s_bits = CNTW'(CORES * R_D); gbuf_shifted = gbuf >> (CORES * R_D); end
            SPARSE: begin s_bits = CNTW'(CORES * R_S); gbuf_shifted = gbuf >> (CORES * R_S); end
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

    // ---------------- expander E0: one core beat of the current super-record ----------------
    logic [S_MAX-1:0] cur;
    logic cur_v, issue, beat_end, room;
    logic [BIW-1:0] beat, beat_last;
    logic [31:0] rr;             // record index along the row
    logic [31:0] chunk;          // activation chunk (LANES values) of this beat
    logic close0, last0;
    logic [OCW-1:0] out_count;
    logic [2:0] mac_inflight;
    logic e_v, e_close, e_last, e_odd;

    assign beat_last = (mode_r == DENSE) ? BIW'(BPR_D - 1) : (mode_r == SPARSE) ? BIW'(BPR_S - 1) : '0;
    assign beat_end = (beat == beat_last);
    assign room = (32'(out_count) + 32'(mac_inflight) + 32'(e_v & e_close)) < OUT_DEPTH;
    assign issue = cur_v && room;
    assign exp_ready = !cur_v || (issue && beat_end);
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
            rr <= '0;
        end else begin
            if (sr_pop) cur <= gbuf[S_MAX-1:0];
            if (exp_ready) cur_v <= sr_pop;
            if (issue) begin
                beat <= beat_end ? '0 : beat + 1'b1;
                if (beat_end) rr <= (rr == rpr - 1) ? '0 : rr + 1;
            end
        end
    end

    // activation RAM: two banks (even / odd chunks) so a 2:4 beat reads 2*LANES values at once
    logic [8*LANES-1:0] act_even [ACT_BANK];
    logic [8*LANES-1:0] act_odd [ACT_BANK];
    logic [8*LANES-1:0] ev_q, od_q;
    logic [16*LANES-1:0] act2;  // a 2:4 beat's 2*LANES values (chunks 2j, 2j+1)
    assign act2 = {od_q, ev_q};

    always_ff @(posedge clk) begin
        if (act_we && !act_chunk[0]) act_even[ABW'(act_chunk >> 1)] <= act_data;
        if (act_we && act_chunk[0]) act_odd[ABW'(act_chunk >> 1)] <= act_data;
        ev_q <= act_even[ABW'(chunk >> 1)];
        od_q <= act_odd[ABW'(chunk >> 1)];
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
        logic [R_D-1:0] rec_d;
        logic [R_S-1:0] rec_s;
        logic [R_Q-1:0] rec_q;
        logic [R_P-1:0] rec_p;
        logic [LANES-1:0][3:0] code0, zero0, code1, zero1;
        logic [LANES-1:0][1:0] pos0, pos1;
        logic [15:0] scale0, scale1;
        logic signed [7:0] a_op [LANES];
        logic signed [4:0] b_op [LANES];

        assign rec_d = cur[c*R_D +: R_D];
        assign rec_s = cur[c*R_S +: R_S];
        assign rec_q = cur[c*R_Q +: R_Q];
        assign rec_p = cur[c*R_P +: R_P];
        assign scale0 = (mode_r == DENSE) ? rec_d[15:0] : (mode_r == SPARSE) ? rec_s[15:0] : 16'd0;

        for (genvar l = 0; l < LANES; l++) begin : g_lane
            logic [2:0] pat;
            assign pat = rec_s[16 + WBITS + GROUP * WBITS / 2 + 3 * (int'(beat) * (LANES / 2) + l / 2) +: 3];
            always_comb begin
                pos0[l] = 2'd0;
                case (mode_r)
                    DENSE: begin
                        code0[l] = 4'(rec_d[16 + WBITS + (int'(beat) * LANES + l) * WBITS +: WBITS]);
                        zero0[l] = 4'(rec_d[16 +: WBITS]);
                    end
                    SPARSE: begin
                        code0[l] = 4'(rec_s[16 + WBITS + (int'(beat) * LANES + l) * WBITS +: WBITS]);
                        zero0[l] = 4'(rec_s[16 +: WBITS]);
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
            mode_r <= DENSE;
            rpr <= '0;
            sr_pop_left <= '0;
            words_left <= '0;
            rec_iss_left <= '0;
            out_left <= '0;
        end else if (start) begin
            running <= 1'b1;
            done <= 1'b0;
            mode_r <= mode;
            rpr <= rpr_in;
            sr_pop_left <= 32'(nsr_in);
            words_left <= words_in;
            rec_iss_left <= out_total_in;
            out_left <= out_total_in;
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
    assign unused = ^{push_c, mac_inflight, bits_in[63:32]};
endmodule
