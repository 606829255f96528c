# Vitis HLS synthesis of the accllm engine kernel. Usage: vitis_hls -f build_hls.tcl
open_project -reset accllm_hls
set_top accllm_top
add_files accllm_top.cpp -cflags "-I. -std=c++14"
add_files -tb csim_api.cpp -cflags "-I. -std=c++14"
open_solution -reset solution1 -flow_target vitis
source hls_target.tcl
config_compile -pipeline_loops 64
csynth_design
export_design -format xo -output accllm_top.xo
exit
