"""The legacy meta object (§3 of the wire contract) as the API's SI-named geometry."""

from __future__ import annotations

from typing import Any

METERS_PER_ANGSTROM = 1e-10
_EXPOSURE_KEYS = ("count_time", "integrationTime", "exposure_time", "exposureTime")
_DETECTOR_KEYS = ("description", "detector", "Detector", "detector_type", "detectorType")


def si_geometry(legacy: dict[str, Any], *, path: str) -> dict[str, Any]:
    """Every field the API documents, ``None`` where the file does not say."""
    wavelength_a = _number(legacy.get("wavelength"))
    bytes_per_pixel = _number(legacy.get("image_depth"))
    return {
        "path": path,
        "frame": legacy.get("frame"),
        "first_frame": legacy.get("first_frame"),
        "last_frame": legacy.get("last_frame"),
        "width_px": legacy.get("x_pixels_in_detector"),
        "height_px": legacy.get("y_pixels_in_detector"),
        "bit_depth": int(bytes_per_pixel * 8) if bytes_per_pixel else None,
        "beam_center_x_px": _number(legacy.get("beam_center_x")),
        "beam_center_y_px": _number(legacy.get("beam_center_y")),
        "distance_m": _number(legacy.get("detector_distance")),
        "wavelength_a": wavelength_a,
        "wavelength_m": wavelength_a * METERS_PER_ANGSTROM if wavelength_a else None,
        "photon_energy_ev": _number(legacy.get("photon_energy")),
        "pixel_size_x_m": _number(legacy.get("x_pixel_size")),
        "pixel_size_y_m": _number(legacy.get("y_pixel_size")),
        "exposure_time_s": _first_number(legacy, _EXPOSURE_KEYS),
        "saturation_value": _number(legacy.get("saturation_value")),
        "detector": _first_text(legacy, _DETECTOR_KEYS),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _first_number(legacy: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = _number(legacy.get(key))
        if value is not None:
            return value
    return None


def _first_text(legacy: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = legacy.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
