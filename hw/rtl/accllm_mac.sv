// accllm_mac: the multiply-accumulate pipeline shared by accllm_core and the engine's cores (accllm_engine).
//
// Takes LANES operand pairs (a int8, b = code - zero int5) per valid beat and never stalls: S1 operand registers,
// S2 packed DSP multiplies (accllm_dot2, two products per DSP48E2), S3 balanced adder tree, S4 accumulate. An
// accumulation closes on a beat with in_close; the closing beat's sum leaves as out_acc with out_valid, three
// cycles after the beat is presented. ``in_tag`` rides along with each beat and comes out with its result.
// Callers admit beats only when they can take every result still in flight (``inflight`` closes in S1..S3).
module accllm_mac #(
    parameter int LANES = 16,
    parameter int TAG_W = 1
) (
    input  logic                     clk,
    input  logic                     rst_n,
    input  logic                     in_valid,
    input  logic                     in_close,
    input  logic [TAG_W-1:0]         in_tag,
    input  logic signed [7:0]        a_op [LANES],
    input  logic signed [4:0]        b_op [LANES],
    output logic                     out_valid,  // a closed accumulation this cycle
    output logic signed [31:0]       out_acc,
    output logic [TAG_W-1:0]         out_tag,
    output logic [2:0]               inflight    // closing beats in S1..S3
);
    localparam int PAIRS = LANES / 2;
    localparam int TREE_LEAVES = 1 << $clog2(PAIRS);
    localparam int SUMW = 13 + $clog2(PAIRS) + 1;  // sum of PAIRS 13-bit signed pair sums

    logic v1, v2, v3;
    logic c1, c2, c3;
    logic [TAG_W-1:0] t1, t2, t3;

    assign inflight = 3'(v1 & c1) + 3'(v2 & c2) + 3'(v3 & c3);

    // ---------------- S1: operand registers ----------------
    logic signed [7:0] a1 [LANES];
    logic signed [4:0] b1 [LANES];

    always_ff @(posedge clk) begin
        a1 <= a_op;
        b1 <= b_op;
        c1 <= in_close;
        t1 <= in_tag;
    end

    // ---------------- S2: packed multiplies ----------------
    logic signed [12:0] pair_sum [PAIRS];

    for (genvar j = 0; j < PAIRS; j++) begin : g_pair
        accllm_dot2 u_dot2 (
            .clk(clk),
            .a_hi(a1[2*j]), .a_lo(a1[2*j+1]),
            .b_hi(b1[2*j+1]), .b_lo(b1[2*j]),
            .sum(pair_sum[j])   // a1[2j]*b1[2j] + a1[2j+1]*b1[2j+1]
        );
    end

    always_ff @(posedge clk) begin
        c2 <= c1;
        t2 <= t1;
    end

    // ---------------- S3: balanced adder tree ----------------
    logic signed [SUMW-1:0] node [2*TREE_LEAVES];
    logic signed [SUMW-1:0] sum3;

    always_comb begin
        node[0] = '0;  // unused (heap indexing starts at 1)
        for (int i = 0; i < TREE_LEAVES; i++)
            node[TREE_LEAVES + i] = (i < PAIRS) ? SUMW'(pair_sum[i]) : '0;
        for (int i = TREE_LEAVES - 1; i >= 1; i--)
            node[i] = node[2*i] + node[2*i+1];
    end

    always_ff @(posedge clk) begin
        sum3 <= node[1];
        c3 <= c2;
        t3 <= t2;
    end

    // ---------------- S4: accumulate ----------------
    logic signed [31:0] acc;
    logic fresh;  // next beat starts a new accumulation

    assign out_acc = (fresh ? 32'sd0 : acc) + 32'(sum3);
    assign out_valid = v3 && c3;
    assign out_tag = t3;

    always_ff @(posedge clk) begin
        if (!rst_n) fresh <= 1'b1;
        else if (v3) fresh <= c3;
        if (v3) acc <= out_acc;
    end

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            v1 <= 1'b0;
            v2 <= 1'b0;
            v3 <= 1'b0;
        end else begin
            v1 <= in_valid;
            v2 <= v1;
            v3 <= v2;
        end
    end
endmodule
