// accllm_operand_decode: the mode switch. Turns one A beat and one B beat into LANES operand pairs
// (a[l] int8, b[l] = code - zero int5); everything after this is the same for all four modes.
// Beat layouts are defined once in sim/core_stream.py (accllm.sim.core_stream).
module accllm_operand_decode #(
    parameter int LANES = 16
) (
    input  logic [1:0]            mode,
    input  logic [16*LANES-1:0]   a_data,
    input  logic [8*LANES-1:0]    b_data,
    output logic signed [7:0]     a_op [LANES],
    output logic signed [4:0]     b_op [LANES]
);
    localparam logic [1:0] DENSE = 2'd0, SPARSE = 2'd1, QK = 2'd2;  // PV = 2'd3 is the default branch

    for (genvar l = 0; l < LANES; l++) begin : g_lane
        logic [1:0] pos;
        logic [3:0] code, zero;
        logic [7:0] a_sel;

        assign pos = b_data[2*LANES + 2*l +: 2];

        // 2:4 index decoding: lane l holds a kept weight of block l/2; pick its input among the block's four.
        always_comb begin
            case (pos)
                2'd0:    a_sel = a_data[8*(4*(l/2) + 0) +: 8];
                2'd1:    a_sel = a_data[8*(4*(l/2) + 1) +: 8];
                2'd2:    a_sel = a_data[8*(4*(l/2) + 2) +: 8];
                default: a_sel = a_data[8*(4*(l/2) + 3) +: 8];
            endcase
        end

        always_comb begin
            case (mode)
                DENSE: begin
                    code = {2'b00, b_data[2*l +: 2]};
                    zero = {2'b00, b_data[2*LANES +: 2]};
                end
                SPARSE: begin
                    code = {2'b00, b_data[2*l +: 2]};
                    zero = {2'b00, b_data[4*LANES +: 2]};
                end
                QK: begin
                    code = b_data[4*l +: 4];
                    zero = b_data[4*LANES +: 4];
                end
                default: begin  // PV: one zero point per lane (per token along the reduction)
                    code = b_data[4*l +: 4];
                    zero = b_data[4*LANES + 4*l +: 4];
                end
            endcase
        end

        assign a_op[l] = (mode == SPARSE) ? a_sel : a_data[8*l +: 8];
        assign b_op[l] = $signed({1'b0, code}) - $signed({1'b0, zero});
    end
endmodule
