"""Seconds per outer iteration of the presets on the reference CPU, measured by
``tools/measure_presets.py`` (2 warm-up, mean of 5 timed iterations; presets
whose data was not on the machine are missing). Regenerate rather than edit."""

MACHINE = "Intel(R) Xeon(R) Processor, 2 cores, 2 torch threads, torch 2.14.1+cu130, backend kernels, load average 2.1 at the end (a shared machine: other jobs slow it)"
DATE = "2026-12-06"
THREADS = 2
TIMINGS: dict[str, dict[str, float]] = {
    "digits-lenet-fixed-10": {"s_per_iteration": 0.0217, "iterations": 3000, "load_s": 2.0},
    "digits-lenet-fixed-10-hard": {"s_per_iteration": 0.0198, "iterations": 3000, "load_s": 0.0},
    "mnist-lenet-fixed-10": {"s_per_iteration": 0.0538, "iterations": 23200, "load_s": 0.7},
    "mnist-lenet-fixed-10-hard": {"s_per_iteration": 0.0578, "iterations": 23200, "load_s": 0.6},
    "mnist-lenet-fixed-5": {"s_per_iteration": 0.0537, "iterations": 20800, "load_s": 0.6},
    "mnist-lenet-fixed-5-hard": {"s_per_iteration": 0.0403, "iterations": 20800, "load_s": 0.6},
    "mnist-lenet-random-100": {"s_per_iteration": 0.3882, "iterations": 23200, "load_s": 0.5},
    "mnist-lenet-random-100-hard": {"s_per_iteration": 0.4002, "iterations": 23200, "load_s": 0.5},
    "mnist-lenet-fixed-100": {"s_per_iteration": 0.142, "iterations": 23200, "load_s": 0.5},
    "mnist-lenet-fixed-100-hard": {"s_per_iteration": 0.1356, "iterations": 23200, "load_s": 0.4},
    "cifar10-alexcifarnet-fixed-100": {
        "s_per_iteration": 5.2495,
        "iterations": 19200,
        "load_s": 15.7,
    },
    "cifar10-alexcifarnet-fixed-100-hard": {
        "s_per_iteration": 5.1575,
        "iterations": 19200,
        "load_s": 1.9,
    },
    "cifar10-alexcifarnet-random-100": {
        "s_per_iteration": 26.2879,
        "iterations": 19200,
        "load_s": 1.9,
    },
    "cifar10-alexcifarnet-random-100-hard": {
        "s_per_iteration": 25.2208,
        "iterations": 19200,
        "load_s": 1.6,
    },
    "trec6-bilstm-fixed-6": {"s_per_iteration": 0.6017, "iterations": 1200, "load_s": 0.3},
    "trec6-bilstm-random-6": {"s_per_iteration": 3.1422, "iterations": 1200, "load_s": 0.2},
    "trec6-bilstm-fixed-120": {"s_per_iteration": 0.9874, "iterations": 1200, "load_s": 0.2},
    "trec6-bilstm-random-120": {"s_per_iteration": 4.8804, "iterations": 1200, "load_s": 0.2},
    "trec50-textconvnet-fixed-500": {"s_per_iteration": 0.4055, "iterations": 500, "load_s": 0.2},
    "trec50-textconvnet-random-500": {"s_per_iteration": 1.7504, "iterations": 500, "load_s": 0.2},
    "trec50-textconvnet-fixed-1000": {"s_per_iteration": 0.2843, "iterations": 500, "load_s": 0.2},
    "trec50-textconvnet-random-1000": {"s_per_iteration": 1.2619, "iterations": 500, "load_s": 0.2},
}
