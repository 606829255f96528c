// accllm_word_fifo: the read burst buffer of a memory channel, written so synthesis maps it to block RAM.
//
// The memory is written on push and read synchronously (one cycle), like a block RAM with its output register;
// two register stages behind it (A: the RAM's read data, B: the output) keep one word per cycle flowing under
// back-pressure and present the head word from a register (first-word fall-through). Holds DEPTH + 2 words.
module accllm_word_fifo #(
    parameter int WIDTH = 256,
    parameter int DEPTH = 256     // a power of two
) (
    input  logic              clk,
    input  logic              rst_n,
    input  logic              push,
    input  logic [WIDTH-1:0]  push_data,
    output logic              m_valid,
    input  logic              m_ready,
    output logic [WIDTH-1:0]  m_data
);
    localparam int AW = $clog2(DEPTH);

    if ((DEPTH & (DEPTH - 1)) != 0 || DEPTH < 2) begin : g_bad_depth
        $error("accllm_word_fifo: DEPTH must be a power of two, at least 2");
    end

    logic [WIDTH-1:0] mem [DEPTH];
    logic [AW-1:0] wr_ptr, rd_ptr;
    logic [AW:0] stored;         // words in the RAM
    logic a_valid, rd_en, move_ab;
    logic [WIDTH-1:0] a_data;

    assign move_ab = a_valid && (!m_valid || m_ready);
    assign rd_en = (stored != 0) && (!a_valid || move_ab);

    always_ff @(posedge clk) begin
        if (push) mem[wr_ptr] <= push_data;
        if (rd_en) a_data <= mem[rd_ptr];
        if (move_ab) m_data <= a_data;
    end

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            wr_ptr <= '0;
            rd_ptr <= '0;
            stored <= '0;
            a_valid <= 1'b0;
            m_valid <= 1'b0;
        end else begin
            if (push) wr_ptr <= wr_ptr + 1'b1;
            if (rd_en) rd_ptr <= rd_ptr + 1'b1;
            stored <= stored + (AW+1)'(push) - (AW+1)'(rd_en);
            a_valid <= rd_en || (a_valid && !move_ab);
            if (move_ab) m_valid <= 1'b1;
            else if (m_ready) m_valid <= 1'b0;
        end
    end
endmodule
