# Vivado block design for PYNQ: Zynq UltraScale+ PS + the accllm HLS kernel, to .bit + .hwh.
#   vivado -mode batch -source build_bd.tcl -tclargs <gen dir> <HLS IP repo> <output dir> <name>
# <gen dir>/bd_params.tcl (written by accllm.bitstreams.build) names the board, part, kernel, its m_axi
# ports and the PS S_AXI_HP ports they use, and the engine RTL cell with its streams and masters.
lassign $argv gen_dir ip_repo out_dir name
source [file join $gen_dir bd_params.tcl]

create_project -force accllm_$board_name [file join $gen_dir vivado] -part $part
set bp [lindex [lsort [get_board_parts -quiet $board_part_pattern]] end]
if {$bp eq ""} { error "board files for $board_part_pattern are not installed (Vivado Xilinx board store)" }
set_property board_part $bp [current_project]
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog

create_bd_design accllm
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0]
apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps

# PL clock and the S_AXI_HPn_FPD ports (S_AXI_GP2..GP5 in the PS configuration) the kernel reads memory through.
set cfg [list CONFIG.PSU__FPGA_PL0_ENABLE {1} CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \
             CONFIG.PSU__USE__M_AXI_GP0 {1} CONFIG.PSU__USE__M_AXI_GP1 {0}]
foreach hp $hp_ports {
    regexp {HP(\d)} $hp -> n
    set gp [expr {$n + 2}]
    lappend cfg CONFIG.PSU__USE__S_AXI_GP$gp {1} CONFIG.PSU__SAXIGP${gp}__DATA_WIDTH {128}
}
set_property -dict $cfg $ps

set k [create_bd_cell -type ip -vlnv $ip_vlnv ${kernel}_0]

# Control: PS M_AXI_HPM0_FPD -> kernel s_axilite (PYNQ drives it as the overlay's IP ${kernel}_0).
apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
    -config [list Master /zynq_ultra_ps_e_0/M_AXI_HPM0_FPD Slave /${kernel}_0/$control_port \
             Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip {New AXI SmartConnect}] \
    [get_bd_intf_pins ${kernel}_0/$control_port]

# Data: each kernel m_axi port -> an S_AXI_HP port (round robin when there are more m_axi ports than HP ports).
set i 0
foreach m $m_axi_ports {
    set hp [lindex $hp_ports [expr {$i % [llength $hp_ports]}]]
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
        -config [list Master /${kernel}_0/$m Slave /zynq_ultra_ps_e_0/$hp \
                 Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip Auto] \
        [get_bd_intf_pins zynq_ultra_ps_e_0/$hp]
    incr i
}

# The engine RTL kernel (accllm.bitstreams.engine_kernel, empty names when the build has none): a module reference
# cell from its generated wrapper and sources (UG994 "Referencing RTL Modules"), its AXI4-Stream interfaces joined
# to the kernel's stream ports by interface nets (connect_bd_intf_net, master to slave), its AXI4-Lite control on the
# PS (the host sets each channel's REGION there), each channel's AXI4 master on an HP port (round robin).
if {$engine_module ne ""} {
    add_files -norecurse [lmap src $engine_sources {file normalize [file join $gen_dir $src]}]
    update_compile_order -fileset sources_1
    create_bd_cell -type module -reference $engine_module $engine_cell
    foreach link $engine_axis {
        lassign $link a b
        if {[string match m_axis_* $b]} {
            connect_bd_intf_net [get_bd_intf_pins $engine_cell/$b] [get_bd_intf_pins ${kernel}_0/$a]
        } else {
            connect_bd_intf_net [get_bd_intf_pins ${kernel}_0/$a] [get_bd_intf_pins $engine_cell/$b]
        }
    }
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
        -config [list Master /zynq_ultra_ps_e_0/M_AXI_HPM0_FPD Slave /$engine_cell/$engine_control \
                 Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip Auto] \
        [get_bd_intf_pins $engine_cell/$engine_control]
    set i 0
    foreach m $engine_m_axi {
        set hp [lindex $hp_ports [expr {$i % [llength $hp_ports]}]]
        apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
            -config [list Master /$engine_cell/$m Slave /zynq_ultra_ps_e_0/$hp \
                     Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip Auto] \
            [get_bd_intf_pins zynq_ultra_ps_e_0/$hp]
        incr i
    }
}

assign_bd_address
validate_bd_design
save_bd_design
set bd [get_files accllm.bd]
generate_target all $bd
make_wrapper -files $bd -top -import

launch_runs impl_1 -to_step write_bitstream -jobs 8
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} { error "implementation failed" }

# PYNQ wants <name>.bit with <name>.hwh beside it.
set proj_dir [get_property DIRECTORY [current_project]]
file copy -force [glob $proj_dir/accllm_$board_name.runs/impl_1/*.bit] [file join $out_dir $name.bit]
file copy -force [lindex [glob $proj_dir/accllm_$board_name.gen/sources_1/bd/accllm/hw_handoff/accllm.hwh \
                             $proj_dir/accllm_$board_name.srcs/sources_1/bd/accllm/hw_handoff/accllm.hwh] 0] \
                 [file join $out_dir $name.hwh]
puts "wrote [file join $out_dir $name.bit] and [file join $out_dir $name.hwh]"
