// accllm_out_fifo: output queue of the core. The core only accepts input when the queue has room for every
// accumulator already in flight, so the datapath never stalls and m_tready has no combinational path to the
// input tready signals (no clock-enable fan-out over the DSP pipeline).
module accllm_out_fifo #(
    parameter int WIDTH = 33,
    parameter int DEPTH = 8
) (
    input  logic                        clk,
    input  logic                        rst_n,
    input  logic                        push,
    input  logic [WIDTH-1:0]            push_data,
    output logic                        m_valid,
    input  logic                        m_ready,
    output logic [WIDTH-1:0]            m_data,
    output logic [$clog2(DEPTH+1)-1:0]  count  // entries held
);
    localparam int AW = $clog2(DEPTH);
    localparam int CW = $clog2(DEPTH + 1);

    logic [WIDTH-1:0] mem [DEPTH];
    logic [AW-1:0] wr_ptr, rd_ptr;
    logic pop;

    assign m_valid = (count != 0);
    assign m_data = mem[rd_ptr];
    assign pop = m_valid && m_ready;

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            wr_ptr <= '0;
            rd_ptr <= '0;
            count <= '0;
        end else begin
            if (push) wr_ptr <= (wr_ptr == AW'(DEPTH - 1)) ? '0 : wr_ptr + 1'b1;
            if (pop) rd_ptr <= (rd_ptr == AW'(DEPTH - 1)) ? '0 : rd_ptr + 1'b1;
            count <= count + CW'(push) - CW'(pop);
        end
    end

    always_ff @(posedge clk) if (push) mem[wr_ptr] <= push_data;
endmodule
