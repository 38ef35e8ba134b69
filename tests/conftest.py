"""Shared helpers live in tests/helpers.py (write_recipe, TINY_RECIPE, launch, metrics)."""
