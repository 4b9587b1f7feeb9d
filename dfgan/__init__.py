"""dfgan: a study harness that rebuilds DF-GAN (Tao et al., CVPR 2022) from pluggable components."""

__version__ = "0.1.0"
