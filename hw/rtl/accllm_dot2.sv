// accllm_dot2: two int8 x int5 products summed in ONE 27x18 signed multiply (one DSP48E2).
//
// Packing ("dot-product packing"): with K = 13
//     A = a_hi * 2^K + a_lo          (27-bit port: the DSP48E2 pre-adder forms D + A with D = a_hi << 13,
//                                      A = sign-extended a_lo; |A| <= 2^20 + 128, well inside 27 bits)
//     B = b_hi * 2^K + b_lo          (18-bit port: formed in fabric; |B| <= 15*8192 + 15 < 2^17)
//     P = A * B = a_hi*b_hi * 2^26  +  (a_hi*b_lo + a_lo*b_hi) * 2^13  +  a_lo*b_lo     (45 bits of the 48-bit P)
// The wanted sum M = a_hi*b_lo + a_lo*b_hi is the middle field. Bounds: |a| <= 128, |b| <= 15 (b = code - zero),
// so |a_lo*b_lo| <= 1920 < 2^12 and |M| <= 3840 < 2^12: both fit 13-bit two's complement, which is why K = 13.
// The low field L = a_lo*b_lo is signed, so floor(P / 2^13) = a_hi*b_hi*2^13 + M - [L < 0]: the low field
// borrows one from the middle exactly when it is negative. L's sign is P[12], hence the correction term
//     M = sign_extend_13( P[25:13] + P[12] ).
// The top field a_hi*b_hi is discarded. This serves all four modes (W2: b in [-3,3]; KV4: b in [-15,15]).
//
// Why this packing and not the WP486-style shared-operand packing (a * (w1*2^18 + w2), two products of ONE
// activation): the core is an inner-product engine, lane l multiplies its own a[l] by its own b[l], so no
// operand is shared between lanes; dot-product packing needs no shared operand and already returns the sum
// of the pair, which is what the adder tree wants (half as many tree inputs).
//
// 2-bit weights: b = code - zero is only in [-3, 3]. A W2-only datapath is better off with LUT multipliers:
// a*b for b in {0, +-1, +-2, +-3} is one shift-add (a + 2a) plus a conditional negate, on the order of 10-15
// LUT6 per 8x3 product, and a U280 has ~145x more LUT6 (1.3M) than DSP slices (9024), so LUT MACs scale much
// further. Deeper dot-product packing does not fit: three pairs need fields of 12 bits (three int8 x int3
// products reach |1152|), i.e. 2*12 + 8 = 32 bits on A (> 27) and 2*12 + 3 = 27 bits on B (> 18). With a
// shared activation (row-parallel layout) three W2 products do fit one DSP: a * (w1 + w2*2^10 + w3*2^20),
// each |a*w| <= 384 fits a 10-bit field, the packed weight needs 23 bits of the 27-bit port, and each upper
// field takes the same sign-borrow correction as above. This core keeps one datapath for all four modes, so
// it is sized by the KV4 modes (5-bit b), where two products per DSP is the limit of the 27x18 multiplier.
//
// Pipeline: operands are registered by the caller (AREG/BREG), the product is registered here (MREG/PREG).
module accllm_dot2 (
    input  logic               clk,
    input  logic signed [7:0]  a_hi,
    input  logic signed [7:0]  a_lo,
    input  logic signed [4:0]  b_hi,
    input  logic signed [4:0]  b_lo,
    output logic signed [12:0] sum   // a_hi*b_lo + a_lo*b_hi, one cycle after the operands
);
    localparam int K = 13;

    logic signed [26:0] pa;  // pre-adder output (27-bit multiplier input)
    logic signed [17:0] pb;  // 18-bit multiplier input
    logic signed [44:0] p;   // 27x18 product, registered (MREG/PREG)

    assign pa = (27'(a_hi) <<< K) + 27'(a_lo);
    assign pb = (18'(b_hi) <<< K) + 18'(b_lo);

    always_ff @(posedge clk) p <= pa * pb;

    assign sum = p[2*K-1:K] + 13'(p[K-1]);
endmodule
