"""Network components, one module per axis; importing this package registers them all."""

from dfgan.nn import discriminators, fusion, generators, heads, penalties, text_encoders  # noqa: F401
