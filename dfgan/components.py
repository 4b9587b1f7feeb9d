"""Import every module that registers components, so the registries are complete."""

import dfgan.data  # noqa: F401
import dfgan.nn  # noqa: F401
