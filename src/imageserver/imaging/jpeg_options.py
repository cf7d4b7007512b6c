"""What a view's JPEG may be asked for, known without the encoder: request parsing runs in
the manager, which loads no imaging kernels."""

JPEG_CHROMA = ("420", "444")
"""Chroma subsamplings of views (`encode.encode_jpeg_ycc`): the request field ``chroma``."""
