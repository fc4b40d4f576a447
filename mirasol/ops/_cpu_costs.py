"""The torch backend's CPU cost model (:class:`mirasol.ops._pieces.CallCost`) per head dim,
measured by ``mirasol bench --calibrate-cpu`` (:mod:`mirasol.benchmark.calibrate`); do not edit
by hand.

Measured on: x86_64, Intel(R) Xeon(R) Processor, 2 threads, torch 2.13.0+cpu, 2026-12-03.
"""

from mirasol.ops._pieces import CallCost

FORWARD = {
    16: {
        "unmasked": CallCost(call=0.05107, pair=(2.008e-08, 2.677e-08, 2.688e-08),
            row=7.57e-07, merge=3.228e-07),
        "masked": CallCost(call=0.07808, pair=(4.01e-08, 4.888e-08, 4.927e-08),
            row=7.147e-07, merge=3.228e-07),
        "causal": CallCost(call=0.003479, pair=(2.806e-08, 2.806e-08, 2.806e-08),
            row=5.376e-06, merge=3.228e-07),
    },
    64: {
        "unmasked": CallCost(call=0.0519, pair=(1.538e-08, 1.758e-08, 1.693e-08),
            row=7.072e-07, merge=3.354e-07),
        "masked": CallCost(call=0.1127, pair=(2.102e-08, 2.228e-08, 2.03e-08),
            row=5.935e-07, merge=3.354e-07),
        "causal": CallCost(call=0.00241, pair=(1.81e-08, 1.81e-08, 1.81e-08),
            row=2.819e-06, merge=3.354e-07),
    },
    128: {
        "unmasked": CallCost(call=0.04275, pair=(1.611e-08, 1.565e-08, 1.382e-08),
            row=4.851e-07, merge=2.677e-07),
        "masked": CallCost(call=0.06695, pair=(1.78e-08, 1.748e-08, 1.682e-08),
            row=4.255e-07, merge=2.677e-07),
        "causal": CallCost(call=0, pair=(1.668e-08, 1.668e-08, 1.668e-08),
            row=2.164e-06, merge=2.677e-07),
    },
}
BACKWARD = {
    16: {
        "unmasked": CallCost(call=0.06906, pair=(5.964e-08, 5.656e-08, 5.357e-08),
            row=1.739e-06, merge=3.228e-07),
        "masked": CallCost(call=0.08612, pair=(8.118e-08, 7.949e-08, 7.713e-08),
            row=1.734e-06, merge=3.228e-07),
        "causal": CallCost(call=0.01176, pair=(5.836e-08, 5.836e-08, 5.836e-08),
            row=9.958e-06, merge=3.228e-07),
    },
    64: {
        "unmasked": CallCost(call=0.1072, pair=(4.337e-08, 4.38e-08, 4.151e-08),
            row=1.233e-06, merge=3.354e-07),
        "masked": CallCost(call=0.1373, pair=(5.246e-08, 4.891e-08, 4.383e-08),
            row=1.241e-06, merge=3.354e-07),
        "causal": CallCost(call=0, pair=(4.646e-08, 4.646e-08, 4.646e-08),
            row=5.94e-06, merge=3.354e-07),
    },
    128: {
        "unmasked": CallCost(call=0.09086, pair=(4.939e-08, 3.996e-08, 3.72e-08),
            row=1.116e-06, merge=2.677e-07),
        "masked": CallCost(call=0.07634, pair=(5.025e-08, 4.151e-08, 4.034e-08),
            row=1.082e-06, merge=2.677e-07),
        "causal": CallCost(call=0, pair=(4.474e-08, 4.474e-08, 4.474e-08),
            row=4.824e-06, merge=2.677e-07),
    },
}
