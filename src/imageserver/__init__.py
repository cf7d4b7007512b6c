"""Diffraction image server: detector frames to JPEG views for crystallography beamlines."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
"""Frames are decoded in pieces on the project's own threads (`formats.bslz4`); the OpenMP
libraries bundled with bitshuffle and hdf5plugin read this once, when they load."""

__version__ = "0.1.0"
