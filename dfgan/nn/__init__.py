"""Network components, one module per axis, each registering its alternatives (``dfgan.experiment`` imports
them all)."""
