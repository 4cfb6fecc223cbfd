"""XLA flags for the test processes' CPU compiles (tests/conftest.py and the processes
that tests start: the multi-host workers, the notebook's kernel, the benchmark).

A test runs each of its programs a few times on tiny inputs, so compiling is most of its
time: XLA:CPU's classic loop fusion emitters instead of the MLIR fusion emitters, its
backend optimization level 0 and no expensive LLVM passes. The arithmetic stays IEEE (no
fast-math); programs run up to ~2× slower, which tests do not measure (benchmarks do, with
XLA's defaults). Whole suite with an empty compilation cache, README command, 2 cores:
25.4 CPU minutes and 15:05 wall with XLA's defaults; 19.1 and 11:48 with the fusion
emitters and LLVM flags; 15.1 and 9:38 with all three. Tests only: the package leaves
XLA's defaults alone.
"""
COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true")
