"""Benchmarks; results and the commands that made them are in docs/BENCHMARKS.md.

They run on the CPU kernels `ctseg` runs on (ctseg.cpu_kernels); TF_ENABLE_ONEDNN_OPTS=0 measures Eigen's."""
from ctseg.cpu_kernels import prefer_onednn

prefer_onednn()
