"""Which Dectris datasets become which legacy meta keys, per DCU firmware generation, and how.

Old web clients read Eiger metadata under the key names of the legacy server's tables
(reference legacy-server.md §3.2), so the tables are kept name for name. The 1.8 table carries
the maintained fork's two corrected paths (legacy-fork-2025.md §5): ``type`` from the detector
group and ``countrate_correction_lookuptable`` from ``countrate_correction_lookup_table``. As
in the fork, only a file that says exactly "1.6.0" gets the 1.6 table; every other version,
including a missing one, gets 1.8 (Dectris renamed datasets and newer firmware follows 1.8).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from imageserver.formats.base import HC_EV_ANGSTROM

DETECTOR = "/entry/instrument/detector"
SPECIFIC = f"{DETECTOR}/detectorSpecific"
SAMPLE_GONIOMETER = "/entry/sample/goniometer"
DETECTOR_GONIOMETER = f"{DETECTOR}/goniometer"
SOFTWARE_VERSION_PATH = f"{SPECIFIC}/software_version"
WAVELENGTH_PATH = "/entry/instrument/beam/incident_wavelength"
COUNT_CUTOFF_PATH = f"{SPECIFIC}/countrate_correction_count_cutoff"
"""Where DCU firmware before 1.8 says what 1.8 calls saturation_value."""

_COMMON: dict[str, str] = {
    **{
        name: f"{SPECIFIC}/{name}"
        for name in (
            "software_version",
            "auto_summation",
            "data_collection_date",
            "element",
            "frame_count_time",
            "frame_period",
            "nimages",
            "ntrigger",
            "number_of_excluded_pixels",
            "photon_energy",
            "trigger_mode",
            "x_pixels_in_detector",
            "y_pixels_in_detector",
        )
    },
    **{
        name: f"{DETECTOR}/{name}"
        for name in (
            "beam_center_x",
            "beam_center_y",
            "bit_depth_readout",
            "bit_depth_image",
            "count_time",
            "description",
            "detector_distance",
            "detector_number",
            "detector_readout_time",
            "flatfield_correction_applied",
            "frame_time",
            "pixel_mask_applied",
            "sensor_material",
            "sensor_thickness",
            "threshold_energy",
            "virtual_pixel_correction_applied",
            "x_pixel_size",
            "y_pixel_size",
        )
    },
    "detector_orientation": f"{DETECTOR}/geometry/orientation/value",
    "detector_translation": f"{DETECTOR}/geometry/translation/distances",
    "wavelength": WAVELENGTH_PATH,
}

_ONLY_1_6: dict[str, str] = {
    **{
        name: f"{SPECIFIC}/{name}"
        for name in (
            "calibration_type",
            "countrate_correction_bunch_mode",
            "detector_readout_period",
            "nframes_sum",
            "summation_nimages",
        )
    },
    "efficiency_correction_applied": f"{DETECTOR}/efficiency_correction_applied",
    **{
        f"{axis}_{suffix}": f"{SAMPLE_GONIOMETER}/{axis}_{suffix}"
        for axis in ("chi", "kappa", "omega", "phi")
        for suffix in ("increment", "start")
    },
    "two_theta_increment": f"{DETECTOR_GONIOMETER}/two_theta_increment",
    "two_theta_start": f"{DETECTOR_GONIOMETER}/two_theta_start",
}

_ROTATION_SUFFIXES = ("", "_end", "_range_average", "_range_total")

_ONLY_1_8: dict[str, str] = {
    "definition": "/entry/definition",
    "type": f"{DETECTOR}/type",
    "distance": f"{DETECTOR}/distance",
    "saturation_value": f"{DETECTOR}/saturation_value",
    "translation": f"{DETECTOR}/transformations/translation",
    **{
        f"two_theta{suffix}": f"{DETECTOR_GONIOMETER}/two_theta{suffix}"
        for suffix in _ROTATION_SUFFIXES
    },
    **{
        f"{axis}{suffix}": f"{SAMPLE_GONIOMETER}/{axis}{suffix}"
        for axis in ("omega", "chi", "phi")
        for suffix in _ROTATION_SUFFIXES
    },
    "countrate_correction_lookuptable": f"{SPECIFIC}/countrate_correction_lookup_table",
    "countrate_correction_table": f"{SPECIFIC}/countrate_correction_table",
    **{
        name: f"{DETECTOR}/module/{name}"
        for name in (
            "data_origin",
            "data_size",
            "fast_pixel_direction",
            "module_index",
            "module_offset",
            "slow_pixel_direction",
        )
    },
}

TABLE_1_6: Mapping[str, str] = MappingProxyType({**_COMMON, **_ONLY_1_6})
"""Legacy JSON name -> dataset path for DCU 1.6 firmware (Eiger 1, e.g. the 9M)."""

TABLE_1_8: Mapping[str, str] = MappingProxyType({**_COMMON, **_ONLY_1_8})
"""Legacy JSON name -> dataset path for DCU 1.8 firmware (Eiger2) and anything unknown."""


def table_for_version(software_version: str | None) -> Mapping[str, str]:
    """The fork's rule: the 1.6 table only for exactly "1.6.0", otherwise 1.8."""
    return TABLE_1_6 if software_version == "1.6.0" else TABLE_1_8


MAX_NATIVE_ELEMENTS = 1 << 17
"""Larger datasets stay out of the meta: count-rate tables (65,535 values) fit, images do not."""


def read_software_version(f: h5py.File) -> str | None:
    value = read_native_value(f.get(SOFTWARE_VERSION_PATH))
    return value if isinstance(value, str) else None


def read_native_fields(f: h5py.File) -> dict[str, Any]:
    """Every dataset of the file's table under its legacy name; missing ones are skipped."""
    table = table_for_version(read_software_version(f))
    fields: dict[str, Any] = {}
    for name, path in table.items():
        value = read_native_value(f.get(path))
        if value is not None:
            fields[name] = value
    return fields


def read_native_value(item: object) -> Any:
    """A dataset as JSON-ready Python: int, float, str, or nested lists of them; else None.

    As in the legacy server, a dataset with one element is a scalar even when stored with
    shape (1,); longer arrays become nested lists of their real element type (the legacy
    server walked 4-byte arrays with an 8-byte stride and returned garbage).
    """
    if not isinstance(item, h5py.Dataset) or item.size > MAX_NATIVE_ELEMENTS:
        return None
    is_string = h5py.check_string_dtype(item.dtype) is not None
    if not is_string and item.dtype.kind not in "iufb":
        return None  # compound, enum, reference, opaque: nothing a client can use
    value = item[()]
    if isinstance(value, np.ndarray):
        if value.size == 1:
            value = value.reshape(()).item()
        else:
            return _decoded(value.tolist())
    elif isinstance(value, np.generic):
        value = value.item()
    return _decoded(value)


def _decoded(value: Any) -> Any:
    """Bytes become str (Dectris writes ASCII), bools become ints, lists recursively."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


_LENGTH_UNITS_M = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "microns": 1e-6}


@dataclass(frozen=True)
class HeaderGeometry:
    """The FrameMeta fields a master states, in the model's units (None when absent)."""

    beam_center_x_px: float | None
    beam_center_y_px: float | None
    distance_m: float | None
    wavelength_a: float | None
    pixel_size_x_m: float | None
    pixel_size_y_m: float | None
    saturation_value: int | None


def read_header_geometry(f: h5py.File) -> HeaderGeometry:
    """Read by path whatever the firmware's table, with the fallbacks older files need."""
    wavelength_a = _number(f, WAVELENGTH_PATH)
    photon_energy_ev = _number(f, f"{SPECIFIC}/photon_energy")
    if not wavelength_a and photon_energy_ev:
        wavelength_a = HC_EV_ANGSTROM / photon_energy_ev
    distance_m = _length_m(f, f"{DETECTOR}/detector_distance")
    saturation = _number(f, f"{DETECTOR}/saturation_value")
    if saturation is None:  # DCU before 1.8: counts from the cutoff up are overloads
        saturation = _number(f, COUNT_CUTOFF_PATH)
    return HeaderGeometry(
        beam_center_x_px=_number(f, f"{DETECTOR}/beam_center_x"),
        beam_center_y_px=_number(f, f"{DETECTOR}/beam_center_y"),
        distance_m=distance_m if distance_m else _length_m(f, f"{DETECTOR}/distance"),
        wavelength_a=wavelength_a or None,
        pixel_size_x_m=_length_m(f, f"{DETECTOR}/x_pixel_size"),
        pixel_size_y_m=_length_m(f, f"{DETECTOR}/y_pixel_size"),
        saturation_value=int(saturation) if saturation is not None else None,
    )


def _number(f: h5py.File, path: str) -> float | None:
    value = read_native_value(f.get(path))
    return float(value) if isinstance(value, int | float) else None


def _length_m(f: h5py.File, path: str) -> float | None:
    """A length in metres; Dectris writes metres, but honour a "mm" or "um" units attribute."""
    value = _number(f, path)
    if value is None:
        return None
    units = f[path].attrs.get("units")
    if isinstance(units, bytes | np.bytes_):
        units = units.decode("ascii", errors="replace")
    return value * _LENGTH_UNITS_M.get(units, 1.0) if isinstance(units, str) else value
