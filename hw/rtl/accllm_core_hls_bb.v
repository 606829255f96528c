// accllm_core_hls_bb: hw/rtl/accllm_core wrapped in the interface Vitis HLS expects of an RTL blackbox.
//
// Vitis HLS drives a blackbox with ap_clk / ap_rst (active high) / ap_ce, the ap_ctrl_chain handshake, scalars
// as plain inputs and hls::stream arguments as FIFO ports (read side: dout, empty_n, read; write side: din,
// full_n, write). An AXI4-Stream maps onto them one to one: tvalid = empty_n (in) or write (out), tready =
// read (in) or full_n (out). The B stream's tlast and the output's tlast travel as the top bit of the word.
//
// One call = one core operation: ap_start latches the mode (written to the core's mode register while no beat
// is in flight) and the number of outputs the operation produces; ap_done rises when that many outputs have
// been written, and stays high until ap_continue (ap_ctrl_chain).
// ap_ce is accepted for the interface but not used: the kernel does not call the core from a stallable pipeline.
`default_nettype none
module accllm_core_hls_bb #(
    parameter LANES = 16,
    parameter GROUP = 32,
    parameter OUT_DEPTH = 8
) (
    input  wire                 ap_clk,
    input  wire                 ap_rst,
    input  wire                 ap_ce,
    input  wire                 ap_start,
    input  wire                 ap_continue,
    output wire                 ap_idle,
    output wire                 ap_ready,
    output wire                 ap_done,
    // scalars
    input  wire [1:0]           mode,
    input  wire [31:0]          n_out,
    // stream a: int8 operands
    input  wire [16*LANES-1:0]  a_dout,
    input  wire                 a_empty_n,
    output wire                 a_read,
    // stream b: {tlast, codes/positions/zero points}
    input  wire [8*LANES:0]     b_dout,
    input  wire                 b_empty_n,
    output wire                 b_read,
    // stream acc: {tlast, 32-bit accumulator}
    output wire [32:0]          acc_din,
    input  wire                 acc_full_n,
    output wire                 acc_write
);
    localparam S_IDLE = 2'd0, S_RUN = 2'd1, S_DONE = 2'd2;
    reg  [1:0]  state;
    reg  [31:0] left;
    wire        start = (state == S_IDLE) && ap_start;

    wire        s_a_tready, s_b_tready, m_tvalid, m_tlast;
    wire [31:0] m_tdata;
    wire [1:0]  core_mode;
    wire        running = (state == S_RUN);

    always @(posedge ap_clk) begin
        if (ap_rst) begin
            state <= S_IDLE;
            left  <= 32'd0;
        end else begin
            case (state)
                S_IDLE: if (ap_start) begin
                    left  <= n_out;
                    state <= (n_out == 32'd0) ? S_DONE : S_RUN;
                end
                S_RUN: if (m_tvalid && acc_full_n) begin
                    left <= left - 32'd1;
                    if (left == 32'd1) state <= S_DONE;
                end
                default: if (ap_continue) state <= S_IDLE;
            endcase
        end
    end

    assign ap_idle  = (state == S_IDLE);
    assign ap_ready = start;
    assign ap_done  = (state == S_DONE);

    // Beats are offered only while running, so the mode written at start applies to every beat of the call.
    assign a_read    = running && a_empty_n && s_a_tready;
    assign b_read    = running && b_empty_n && s_b_tready;
    assign acc_din   = {m_tlast, m_tdata};
    assign acc_write = running && m_tvalid && acc_full_n;  // never write a full FIFO

    accllm_core #(.LANES(LANES), .GROUP(GROUP), .OUT_DEPTH(OUT_DEPTH)) u_core (
        .clk(ap_clk),
        .rst_n(~ap_rst),
        .cfg_we(start),
        .cfg_mode(mode),
        .mode(core_mode),
        .s_a_tvalid(running && a_empty_n),
        .s_a_tready(s_a_tready),
        .s_a_tdata(a_dout),
        .s_b_tvalid(running && b_empty_n),
        .s_b_tready(s_b_tready),
        .s_b_tdata(b_dout[8*LANES-1:0]),
        .s_b_tlast(b_dout[8*LANES]),
        .m_tvalid(m_tvalid),
        .m_tready(running && acc_full_n),
        .m_tdata(m_tdata),
        .m_tlast(m_tlast)
    );

    wire unused = &{1'b0, ap_ce, core_mode};
endmodule
`default_nettype wire
