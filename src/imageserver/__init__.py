"""Diffraction image server: detector frames to JPEG views for crystallography beamlines."""

__version__ = "0.1.0"
