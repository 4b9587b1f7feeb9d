"""Measurements of trained models and of the networks themselves (parameter counts, image metrics)."""
