"""mirasol's ops inside the models people already run. Each integration is its own module,
imported by name, so that its library stays an optional extra:

- :mod:`mirasol.integrations.diffusers`: a frame-chunk-causal ``WanTransformer3DModel``
  (CausVid, Self-Forcing, LongLive) and its chunk-by-chunk KV-cached rollout
  (``pip install mirasol-kernels[diffusers]``).
"""
