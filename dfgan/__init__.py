"""dfgan: a study harness that rebuilds DF-GAN (Tao et al., CVPR 2022) from pluggable components."""

from dfgan import fingerprint as _fingerprint  # noqa: F401  (reads the commit and diff of the code imported now)

__version__ = "0.1.0"
