"""A Pilatus 6M-like miniCBF frame, written with fabio, optionally gz/bz2-wrapped.

2463 × 2527 pixels of 172 µm: 5 × 12 modules of 487 × 195 with 7-pixel column gaps and
17-pixel row gaps (−1), a few bad pixels (−2), counts clipped at Count_cutoff 1048575, and a
Pilatus ``header_contents`` as PILATUS3 firmware writes it.
"""

from __future__ import annotations

import bz2
import gzip
from collections.abc import Callable
from pathlib import Path

import fabio.cbfimage
import numpy as np

from imageserver.sampledata.pattern import Geometry, centred_geometry, module_gaps, synth_frame

WIDTH_PX, HEIGHT_PX = 2463, 2527
PIXEL_SIZE_M = 172e-6
COUNT_CUTOFF = 1048575
MODULE_PX = (487, 195)
GAP_PX = (7, 17)
BAD_PIXELS = 24
ANGLE_INCREMENT_DEG = 0.1
EXPOSURE_TIME_S = 0.0990000
_WRAPPERS: dict[str, Callable[[bytes], bytes]] = {"bz2": bz2.compress, "gz": gzip.compress}


def pilatus_geometry() -> Geometry:
    """The geometry written into every sample CBF header."""
    return centred_geometry(WIDTH_PX, HEIGHT_PX, PIXEL_SIZE_M, distance_m=0.25)


def write_pilatus_cbf(
    path: Path,
    *,
    frame_index: int = 0,
    seed: int = 2026,
    compression: str | None = None,
) -> Path:
    """Write the miniCBF at ``path``; with ``compression`` also ``path`` + ".bz2"/".gz".

    Returns the path a user would open: the wrapped file when one was written.
    """
    if compression is not None and compression not in _WRAPPERS:
        raise ValueError(f"compression must be one of {sorted(_WRAPPERS)} or None")
    geometry = pilatus_geometry()
    counts = pilatus_counts(geometry, frame_index, seed)
    header = {
        "_array_data.header_convention": "PILATUS_1.2",
        "_array_data.header_contents": pilatus_header_contents(geometry, frame_index),
    }
    fabio.cbfimage.CbfImage(data=counts, header=header).write(str(path))
    if compression is None:
        return path
    wrapped = path.with_name(f"{path.name}.{compression}")
    wrapped.write_bytes(_WRAPPERS[compression](path.read_bytes()))
    return wrapped


def pilatus_counts(geometry: Geometry, frame_index: int, seed: int) -> np.ndarray:
    """int32 counts with module gaps at −1 and a few bad pixels at −2."""
    counts = synth_frame(geometry, frame_index, COUNT_CUTOFF, seed).astype(np.int32)
    gaps = module_gaps(WIDTH_PX, HEIGHT_PX, *MODULE_PX, *GAP_PX)
    counts[gaps] = -1
    rng = np.random.default_rng(seed)  # the same bad pixels in every frame, as on a detector
    sensitive_rows, sensitive_cols = np.nonzero(~gaps[::97, ::89])
    pick = rng.choice(sensitive_rows.size, BAD_PIXELS, replace=False)
    counts[sensitive_rows[pick] * 97, sensitive_cols[pick] * 89] = -2
    return counts


def pilatus_header_contents(geometry: Geometry, frame_index: int) -> str:
    """The ``# key value`` lines of a PILATUS3 6M miniCBF, consistent with ``geometry``."""
    start_deg = frame_index * ANGLE_INCREMENT_DEG
    pixel_um = geometry.pixel_size_m * 1e6
    lines = [
        "Detector: PILATUS3 6M, S/N 60-0000 (synthetic)",
        f"2026-01-01T00:00:{frame_index % 60:02d}.000",
        f"Pixel_size {pixel_um:.0f}e-6 m x {pixel_um:.0f}e-6 m",
        "Silicon sensor, thickness 0.001000 m",
        f"Exposure_time {EXPOSURE_TIME_S:.7f} s",
        "Exposure_period 0.1000000 s",
        "Tau = 0 s",
        f"Count_cutoff {COUNT_CUTOFF} counts",
        "Threshold_setting: 6330 eV",
        "Gain_setting: autog (vrf = 1.000)",
        f"N_excluded_pixels = {BAD_PIXELS}",
        "Excluded_pixels: badpix_mask.tif",
        "Flat_field: (nil)",
        f"Wavelength {geometry.wavelength_a:.5f} A",
        f"Detector_distance {geometry.distance_m:.5f} m",
        f"Beam_xy ({geometry.beam_x_px:.2f}, {geometry.beam_y_px:.2f}) pixels",
        "Flux 0.000000",
        "Filter_transmission 1.0000",
        f"Start_angle {start_deg:.4f} deg.",
        f"Angle_increment {ANGLE_INCREMENT_DEG:.4f} deg.",
        "Detector_2theta 0.0000 deg.",
        "Polarization 0.990",
        "Alpha 0.0000 deg.",
        "Kappa 0.0000 deg.",
        f"Phi {start_deg:.4f} deg.",
        f"Phi_increment {ANGLE_INCREMENT_DEG:.4f} deg.",
        "Omega 0.0000 deg.",
        "Omega_increment 0.0000 deg.",
        "Chi 0.0000 deg.",
        "Chi_increment 0.0000 deg.",
        "Oscillation_axis X.CW",
        "N_oscillations 1",
    ]
    return "\r\n".join(f"# {line}" for line in lines)
