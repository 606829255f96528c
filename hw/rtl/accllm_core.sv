// accllm_core: the reconfigurable integer core of the accllm engine (engine arithmetic contract v1).
//
// One datapath, four modes selected by the mode register (cfg_we/cfg_mode):
//   0 DENSE  W2A8        acc[n,g] = sum_{k in group g} x[k] * (w[n,k] - z[n,g])
//   1 SPARSE W2A8 2:4    same, weights as two kept codes + 2-bit positions per block of four
//   2 QK     A8 x KV4    acc[t]   = sum_d q[d] * (k[t,d] - kz[t])
//   3 PV     A8 x KV4    acc[d]   = sum_t p[t] * (v[t,d] - vz[t])
// The golden statement is accllm.sim.golden_core; the beat layouts are accllm.sim.core_stream.
//
// Dataflow: an inner-product engine. Each cycle it takes one A beat (int8 operands) and one B beat (codes,
// positions, zero points) together, forms LANES products a[l] * (code[l] - zero[l]), adds them and
// accumulates into a 32-bit signed accumulator. An accumulation closes every GROUP inputs in the W2 modes and
// at s_b_tlast in every mode; each closed accumulation is one output beat, with m_tlast = the closing beat's
// s_b_tlast. In SPARSE mode an A beat carries 2*LANES activations (LANES/2 blocks of four) and the LANES
// multipliers do only the kept products: twice the dense-equivalent throughput from the same DSPs.
//
// Pipeline (accllm_mac, 4 stages, never stalls): S1 decode + operand registers, S2 packed DSP multiply
// (accllm_dot2, two products per DSP48E2, see that file for the bit positions and the correction term), S3
// balanced adder tree, S4 accumulate and push into the output FIFO. Back-pressure is handled by admitting a beat only when
// the FIFO can hold every accumulation that may still close in the pipeline.
//
// Mode changes take effect for the next accepted beat; change them between packets only.
// Reset is synchronous and active low; it drops every beat and output in flight and sets the mode to DENSE.
module accllm_core #(
    parameter int LANES = 16,    // multipliers, a multiple of 4
    parameter int GROUP = 32,    // W2 quantisation group (inputs along K), a multiple of 2*LANES
    parameter int OUT_DEPTH = 8  // output FIFO entries; 5 or more keeps one beat per cycle when every beat closes
) (
    input  logic                  clk,
    input  logic                  rst_n,
    // mode register
    input  logic                  cfg_we,
    input  logic [1:0]            cfg_mode,
    output logic [1:0]            mode,
    // A stream: int8 operands
    input  logic                  s_a_tvalid,
    output logic                  s_a_tready,
    input  logic [16*LANES-1:0]   s_a_tdata,
    // B stream: codes, positions, zero points
    input  logic                  s_b_tvalid,
    output logic                  s_b_tready,
    input  logic [8*LANES-1:0]    s_b_tdata,
    input  logic                  s_b_tlast,
    // output stream: 32-bit accumulators
    output logic                  m_tvalid,
    input  logic                  m_tready,
    output logic [31:0]           m_tdata,
    output logic                  m_tlast
);
    localparam logic [1:0] DENSE = 2'd0, SPARSE = 2'd1;
    localparam int GB_DENSE = GROUP / LANES;         // B beats per group
    localparam int GB_SPARSE = GROUP / (2 * LANES);
    localparam int GCW = $clog2(GB_DENSE + 1);
    localparam int FCW = $clog2(OUT_DEPTH + 1);

    if (LANES < 4 || LANES % 4 != 0) begin : g_bad_lanes
        $error("accllm_core: LANES must be a positive multiple of 4");
    end
    if (GROUP < 2 * LANES || GROUP % (2 * LANES) != 0) begin : g_bad_group
        $error("accllm_core: GROUP must be a positive multiple of 2*LANES");
    end
    if (OUT_DEPTH < 2) begin : g_bad_depth
        $error("accllm_core: OUT_DEPTH must be at least 2");
    end

    // ---------------- mode register ----------------
    always_ff @(posedge clk) begin
        if (!rst_n) mode <= DENSE;
        else if (cfg_we) mode <= cfg_mode;
    end

    // ---------------- admission ----------------
    logic [FCW-1:0] fifo_count;
    logic [2:0] inflight;
    logic room, accept, close_in, w2;
    logic [GCW-1:0] gcount, glast;

    assign room = (32'(fifo_count) + 32'(inflight)) < OUT_DEPTH;
    assign s_a_tready = s_b_tvalid && room;
    assign s_b_tready = s_a_tvalid && room;
    assign accept = s_a_tvalid && s_b_tvalid && room;

    assign w2 = (mode == DENSE) || (mode == SPARSE);
    assign glast = (mode == SPARSE) ? GCW'(GB_SPARSE - 1) : GCW'(GB_DENSE - 1);
    assign close_in = s_b_tlast || (w2 && gcount == glast);

    always_ff @(posedge clk) begin
        if (!rst_n) gcount <= '0;
        else if (accept) gcount <= close_in ? '0 : gcount + 1'b1;
    end

    // ---------------- decode, then the MAC pipeline ----------------
    logic signed [7:0] a_dec [LANES];
    logic signed [4:0] b_dec [LANES];
    logic push, push_last;
    logic signed [31:0] push_acc;

    accllm_operand_decode #(.LANES(LANES)) u_decode (
        .mode(mode), .a_data(s_a_tdata), .b_data(s_b_tdata), .a_op(a_dec), .b_op(b_dec)
    );

    accllm_mac #(.LANES(LANES), .TAG_W(1)) u_mac (
        .clk(clk), .rst_n(rst_n), .in_valid(accept), .in_close(close_in), .in_tag(s_b_tlast),
        .a_op(a_dec), .b_op(b_dec), .out_valid(push), .out_acc(push_acc), .out_tag(push_last), .inflight(inflight)
    );

    // ---------------- output ----------------
    logic [32:0] out_word;

    accllm_out_fifo #(.WIDTH(33), .DEPTH(OUT_DEPTH)) u_out (
        .clk(clk), .rst_n(rst_n),
        .push(push), .push_data({push_last, push_acc}),
        .m_valid(m_tvalid), .m_ready(m_tready), .m_data(out_word), .count(fifo_count)
    );

    assign m_tdata = out_word[31:0];
    assign m_tlast = out_word[32];
endmodule
