"""Layers that several families share: projections, norms, attention kernels, RoPE, the KV
cache, layer stacking and the output projection. A family's own math lives in its folder."""
