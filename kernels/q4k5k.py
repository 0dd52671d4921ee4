"""Placeholder: kernels for this module are being written."""
