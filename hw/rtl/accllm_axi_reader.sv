// accllm_axi_reader: AXI4 read master that streams one contiguous section of memory as full-width words.
//
// start latches a word-aligned base address and a length in words. Bursts are INCR, full width (ARSIZE =
// log2(W/8)), at most BURST beats, never across a 4 KiB boundary (AXI4 rule), all with ARID 0 so data returns in
// order. Reads are issued against credits: a burst is requested only when the word FIFO has room for it and for
// every word already requested, so RREADY stays high and as many bursts are in flight as the FIFO holds
// (FIFO_DEPTH / BURST of them: the latency the FIFO can hide). Words leave in address order through m_*.
module accllm_axi_reader #(
    parameter int W = 256,            // data width: 128, 256 or 512 bits
    parameter int ADDR_W = 64,
    parameter int BURST = 64,         // beats per burst, at most 256 (AXI4 INCR)
    parameter int FIFO_DEPTH = 256    // words (a power of two, a multiple of BURST): block RAM
) (
    input  logic                clk,
    input  logic                rst_n,
    input  logic                start,
    input  logic [ADDR_W-1:0]   base,
    input  logic [31:0]         words,
    // word stream out
    output logic                m_valid,
    input  logic                m_ready,
    output logic [W-1:0]        m_data,
    output logic [31:0]         words_read,   // words received since start
    // AXI4 read address channel
    output logic [ADDR_W-1:0]   araddr,
    output logic [7:0]          arlen,
    output logic [2:0]          arsize,
    output logic [1:0]          arburst,
    output logic [3:0]          arcache,
    output logic [2:0]          arprot,
    output logic                arid,
    output logic                arvalid,
    input  logic                arready,
    // AXI4 read data channel
    input  logic [W-1:0]        rdata,
    input  logic [1:0]          rresp,
    input  logic                rlast,
    input  logic                rid,
    input  logic                rvalid,
    output logic                rready
);
    localparam int WBYTES = W / 8;
    localparam int WB_LOG = $clog2(WBYTES);
    localparam int PAGE_WORDS = 4096 / WBYTES;
    localparam int CW = $clog2(FIFO_DEPTH + 1);

    if (W != 128 && W != 256 && W != 512) begin : g_bad_width
        $error("accllm_axi_reader: W must be 128, 256 or 512");
    end
    if (BURST < 1 || BURST > 256 || BURST > PAGE_WORDS || FIFO_DEPTH % BURST != 0) begin : g_bad_burst
        $error("accllm_axi_reader: BURST must be 1..256, at most a 4 KiB page, and divide FIFO_DEPTH");
    end

    logic [ADDR_W-1:0] addr;
    logic [31:0] to_request;
    logic [CW-1:0] reserved;     // words in the FIFO + words requested and not yet received
    logic [31:0] len, page_left;
    logic push, pop, ar_fire;

    assign page_left = 32'(PAGE_WORDS) - 32'(addr[11:WB_LOG]);
    always_comb begin
        len = (to_request < 32'(BURST)) ? to_request : 32'(BURST);
        if (page_left < len) len = page_left;
    end

    assign araddr = addr;
    assign arlen = 8'(len - 1);
    assign arsize = 3'(WB_LOG);
    assign arburst = 2'b01;   // INCR
    assign arcache = 4'b0011; // normal, non-cacheable, bufferable
    assign arprot = 3'b000;
    assign arid = 1'b0;
    assign arvalid = (to_request != 0) && (32'(reserved) + len <= 32'(FIFO_DEPTH));
    assign ar_fire = arvalid && arready;

    assign rready = 1'b1;  // the FIFO always has room for what was requested
    assign push = rvalid;
    assign pop = m_valid && m_ready;

    always_ff @(posedge clk) begin
        if (!rst_n) begin
            addr <= '0;
            to_request <= '0;
            reserved <= '0;
            words_read <= '0;
        end else if (start) begin
            addr <= base;
            to_request <= words;
            reserved <= '0;
            words_read <= '0;
        end else begin
            if (ar_fire) begin
                addr <= addr + ADDR_W'(len << WB_LOG);
                to_request <= to_request - len;
            end
            reserved <= reserved + (ar_fire ? CW'(len) : '0) - CW'(pop);
            if (push) words_read <= words_read + 1;
        end
    end

    accllm_word_fifo #(.WIDTH(W), .DEPTH(FIFO_DEPTH)) u_words (
        .clk(clk), .rst_n(rst_n && !start),
        .push(push), .push_data(rdata),
        .m_valid(m_valid), .m_ready(m_ready), .m_data(m_data)
    );

    // rresp, rlast, rid: data returns in order with ID 0; the burst boundaries need no tracking here.
    logic unused;
    assign unused = ^{rresp, rlast, rid};
endmodule
