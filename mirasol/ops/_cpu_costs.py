"""The torch backend's CPU cost model (:class:`mirasol.ops._pieces.CallCost`) per dtype and
head dim, measured by ``mirasol bench --calibrate-cpu`` (:mod:`mirasol.benchmark.calibrate`);
do not edit by hand.

Measured on: x86_64, Intel(R) Xeon(R) Processor, 2 threads, torch 2.13.0+cpu, 2026-12-03.
"""

from mirasol.ops._pieces import CallCost

FORWARD = {
    ('float32', 16): {
        "unmasked": CallCost(call=0.03073, pair=2.96e-08, stream=0,
            row=6.251e-07, merge=5.274e-07),
        "masked": CallCost(call=0.03073, pair=4.982e-08, stream=0,
            row=4.315e-07, merge=5.274e-07),
        "causal": CallCost(call=0.03073, pair=3.026e-08, stream=1.056e-06,
            row=3.194e-06, merge=5.274e-07),
    },
    ('float32', 64): {
        "unmasked": CallCost(call=0.03604, pair=1.725e-08, stream=0,
            row=3.282e-07, merge=4.396e-07),
        "masked": CallCost(call=0.03604, pair=2.386e-08, stream=0,
            row=3.833e-07, merge=4.396e-07),
        "causal": CallCost(call=0.03604, pair=1.795e-08, stream=3.968e-07,
            row=1.353e-06, merge=4.396e-07),
    },
    ('float32', 128): {
        "unmasked": CallCost(call=0.04775, pair=1.488e-08, stream=2.703e-08,
            row=3.363e-07, merge=3.499e-07),
        "masked": CallCost(call=0.04775, pair=1.918e-08, stream=0,
            row=4.434e-07, merge=3.499e-07),
        "causal": CallCost(call=0.04775, pair=1.556e-08, stream=2.319e-07,
            row=1.964e-06, merge=3.499e-07),
    },
    ('bfloat16', 16): {
        "unmasked": CallCost(call=0.03446, pair=2.086e-08, stream=0,
            row=6.753e-07, merge=5.505e-07),
        "masked": CallCost(call=0.03446, pair=3.09e-08, stream=0,
            row=6.585e-07, merge=5.505e-07),
        "causal": CallCost(call=0.03446, pair=2.161e-08, stream=4.859e-07,
            row=2.251e-06, merge=5.505e-07),
    },
    ('bfloat16', 64): {
        "unmasked": CallCost(call=0.03546, pair=6.056e-09, stream=2.921e-08,
            row=3.421e-07, merge=3.512e-07),
        "masked": CallCost(call=0.03546, pair=9.41e-09, stream=0,
            row=3.536e-07, merge=3.512e-07),
        "causal": CallCost(call=0.03546, pair=6.864e-09, stream=7.289e-08,
            row=7.824e-07, merge=3.512e-07),
    },
    ('bfloat16', 128): {
        "unmasked": CallCost(call=0.03832, pair=3.799e-09, stream=1.462e-08,
            row=3.246e-07, merge=3.556e-07),
        "masked": CallCost(call=0.03832, pair=5.895e-09, stream=0,
            row=3.721e-07, merge=3.556e-07),
        "causal": CallCost(call=0.03832, pair=4.257e-09, stream=6.06e-08,
            row=8.014e-07, merge=3.556e-07),
    },
}
BACKWARD = {
    ('float32', 16): {
        "unmasked": CallCost(call=0.05498, pair=5.206e-08, stream=5.406e-07,
            row=1.796e-06, merge=5.274e-07),
        "masked": CallCost(call=0.05498, pair=7.659e-08, stream=1.708e-07,
            row=2.339e-06, merge=5.274e-07),
        "causal": CallCost(call=0.05498, pair=6.124e-08, stream=5.084e-07,
            row=1.177e-05, merge=5.274e-07),
    },
    ('float32', 64): {
        "unmasked": CallCost(call=0.07731, pair=3.757e-08, stream=4.213e-07,
            row=1.295e-06, merge=4.396e-07),
        "masked": CallCost(call=0.07731, pair=4.583e-08, stream=2.15e-07,
            row=1.273e-06, merge=4.396e-07),
        "causal": CallCost(call=0.07731, pair=4.197e-08, stream=7.802e-07,
            row=5.489e-06, merge=4.396e-07),
    },
    ('float32', 128): {
        "unmasked": CallCost(call=0.1016, pair=3.411e-08, stream=6.045e-07,
            row=1.119e-06, merge=3.499e-07),
        "masked": CallCost(call=0.1016, pair=4.076e-08, stream=4.233e-07,
            row=1.073e-06, merge=3.499e-07),
        "causal": CallCost(call=0.1016, pair=4.105e-08, stream=9.321e-07,
            row=4.198e-06, merge=3.499e-07),
    },
    ('bfloat16', 16): {
        "unmasked": CallCost(call=0.0639, pair=9.728e-08, stream=2.006e-06,
            row=4.923e-06, merge=5.505e-07),
        "masked": CallCost(call=0.0639, pair=9.886e-08, stream=2.594e-06,
            row=4.844e-06, merge=5.505e-07),
        "causal": CallCost(call=0.0639, pair=7.109e-08, stream=9.493e-06,
            row=1.919e-05, merge=5.505e-07),
    },
    ('bfloat16', 64): {
        "unmasked": CallCost(call=0.08698, pair=2.931e-08, stream=8.686e-07,
            row=1.959e-06, merge=3.512e-07),
        "masked": CallCost(call=0.08698, pair=3.393e-08, stream=5.847e-07,
            row=1.964e-06, merge=3.512e-07),
        "causal": CallCost(call=0.08698, pair=2.779e-08, stream=1.449e-06,
            row=6.466e-06, merge=3.512e-07),
    },
    ('bfloat16', 128): {
        "unmasked": CallCost(call=0.1187, pair=1.724e-08, stream=6.83e-07,
            row=1.925e-06, merge=3.556e-07),
        "masked": CallCost(call=0.1187, pair=1.838e-08, stream=1.075e-06,
            row=1.731e-06, merge=3.556e-07),
        "causal": CallCost(call=0.1187, pair=1.45e-08, stream=1.863e-06,
            row=3.9e-06, merge=3.556e-07),
    },
}
