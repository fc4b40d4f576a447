"""The torch backend's CPU cost model (:class:`mirasol.ops._pieces.CallCost`) per dtype and
head dim, measured by ``mirasol bench --calibrate-cpu`` (:mod:`mirasol.benchmark.calibrate`);
do not edit by hand.

Measured on: x86_64, Intel(R) Xeon(R) Processor, 2 threads, torch 2.13.0+cpu, 2026-12-03.
"""

from mirasol.ops._pieces import CallCost

FORWARD = {
    ('float32', 16): {
        "unmasked": CallCost(call=0.07851, pair=(2.13e-08, 2.734e-08, 2.655e-08),
            row=8.39e-07, merge=4.955e-07),
        "masked": CallCost(call=0.06885, pair=(3.465e-08, 4.149e-08, 4.442e-08),
            row=9.399e-07, merge=4.955e-07),
        "causal": CallCost(call=0.02548, pair=(3.042e-08, 3.042e-08, 3.042e-08),
            row=4.229e-06, merge=4.955e-07),
    },
    ('float32', 64): {
        "unmasked": CallCost(call=0.03025, pair=(1.395e-08, 1.614e-08, 1.606e-08),
            row=6.645e-07, merge=3.348e-07),
        "masked": CallCost(call=0.06655, pair=(1.742e-08, 2.099e-08, 2.088e-08),
            row=7.606e-07, merge=3.348e-07),
        "causal": CallCost(call=0.0156, pair=(1.86e-08, 1.86e-08, 1.86e-08),
            row=1.907e-06, merge=3.348e-07),
    },
    ('float32', 128): {
        "unmasked": CallCost(call=0.05276, pair=(1.396e-08, 1.549e-08, 1.398e-08),
            row=4.58e-07, merge=2.548e-07),
        "masked": CallCost(call=0.05737, pair=(1.595e-08, 1.672e-08, 1.582e-08),
            row=5.649e-07, merge=2.548e-07),
        "causal": CallCost(call=0, pair=(1.582e-08, 1.582e-08, 1.582e-08),
            row=2.28e-06, merge=2.548e-07),
    },
    ('bfloat16', 16): {
        "unmasked": CallCost(call=0.0726, pair=(1.329e-08, 1.838e-08, 1.937e-08),
            row=8.918e-07, merge=4.352e-07),
        "masked": CallCost(call=0.1085, pair=(2.23e-08, 3.065e-08, 2.847e-08),
            row=1.099e-06, merge=4.352e-07),
        "causal": CallCost(call=0.04403, pair=(1.969e-08, 1.969e-08, 1.969e-08),
            row=3.819e-06, merge=4.352e-07),
    },
    ('bfloat16', 64): {
        "unmasked": CallCost(call=0.06804, pair=(7.099e-09, 5.737e-09, 5.799e-09),
            row=3.856e-07, merge=3.572e-07),
        "masked": CallCost(call=0.08325, pair=(9.549e-09, 8.739e-09, 8.646e-09),
            row=3.466e-07, merge=3.572e-07),
        "causal": CallCost(call=0.02905, pair=(6.132e-09, 6.132e-09, 6.132e-09),
            row=1.416e-06, merge=3.572e-07),
    },
    ('bfloat16', 128): {
        "unmasked": CallCost(call=0.04729, pair=(5.522e-09, 3.841e-09, 3.441e-09),
            row=3.22e-07, merge=2.99e-07),
        "masked": CallCost(call=0.09048, pair=(6.642e-09, 5.356e-09, 4.97e-09),
            row=3.701e-07, merge=2.99e-07),
        "causal": CallCost(call=0.00826, pair=(3.762e-09, 3.762e-09, 3.762e-09),
            row=7.665e-07, merge=2.99e-07),
    },
}
BACKWARD = {
    ('float32', 16): {
        "unmasked": CallCost(call=0.09513, pair=(6.045e-08, 5.94e-08, 5.478e-08),
            row=1.634e-06, merge=4.955e-07),
        "masked": CallCost(call=0.0887, pair=(6.754e-08, 7.183e-08, 6.951e-08),
            row=2.252e-06, merge=4.955e-07),
        "causal": CallCost(call=0, pair=(5.882e-08, 5.882e-08, 5.882e-08),
            row=1.026e-05, merge=4.955e-07),
    },
    ('float32', 64): {
        "unmasked": CallCost(call=0.1083, pair=(4.252e-08, 4.161e-08, 3.934e-08),
            row=1.047e-06, merge=3.348e-07),
        "masked": CallCost(call=0.1608, pair=(4.637e-08, 4.573e-08, 4.46e-08),
            row=1.087e-06, merge=3.348e-07),
        "causal": CallCost(call=0, pair=(4.268e-08, 4.268e-08, 4.268e-08),
            row=6e-06, merge=3.348e-07),
    },
    ('float32', 128): {
        "unmasked": CallCost(call=0.07196, pair=(4.668e-08, 4.091e-08, 3.79e-08),
            row=8.237e-07, merge=2.548e-07),
        "masked": CallCost(call=0.1546, pair=(4.924e-08, 4.105e-08, 3.944e-08),
            row=9.507e-07, merge=2.548e-07),
        "causal": CallCost(call=0, pair=(4.37e-08, 4.37e-08, 4.37e-08),
            row=4.556e-06, merge=2.548e-07),
    },
    ('bfloat16', 16): {
        "unmasked": CallCost(call=0.5571, pair=(8.859e-08, 1.226e-07, 9.639e-08),
            row=5.783e-06, merge=4.352e-07),
        "masked": CallCost(call=0.5096, pair=(1.111e-07, 1.451e-07, 1.055e-07),
            row=5.97e-06, merge=4.352e-07),
        "causal": CallCost(call=0.4831, pair=(8.423e-08, 8.423e-08, 8.423e-08),
            row=2.838e-05, merge=4.352e-07),
    },
    ('bfloat16', 64): {
        "unmasked": CallCost(call=0.5157, pair=(3.199e-08, 3.429e-08, 3.016e-08),
            row=1.785e-06, merge=3.572e-07),
        "masked": CallCost(call=0.615, pair=(3.785e-08, 3.849e-08, 3.487e-08),
            row=1.154e-06, merge=3.572e-07),
        "causal": CallCost(call=0.833, pair=(2.771e-08, 2.771e-08, 2.771e-08),
            row=8.501e-06, merge=3.572e-07),
    },
    ('bfloat16', 128): {
        "unmasked": CallCost(call=0.5194, pair=(2.456e-08, 2.466e-08, 1.794e-08),
            row=1.103e-06, merge=2.99e-07),
        "masked": CallCost(call=0.5512, pair=(2.576e-08, 2.8e-08, 1.944e-08),
            row=1.132e-06, merge=2.99e-07),
        "causal": CallCost(call=0.2922, pair=(1.54e-08, 1.54e-08, 1.54e-08),
            row=5.345e-06, merge=2.99e-07),
    },
}
