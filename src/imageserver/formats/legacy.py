"""FrameMeta as the legacy server's meta object, so existing web clients find their fields.

Legacy names and units (reference §3.2–3.4): `x_pixels_in_detector`, `y_pixels_in_detector`
(px), `beam_center_x`, `beam_center_y` (px), `detector_distance` (m), `wavelength` (Å),
`photon_energy` (eV), `x_pixel_size`, `y_pixel_size` (m), `image_depth` (bytes per pixel),
`saturation_value` (counts), `first_frame`, `last_frame`, `frame` (1-based), `fn` (the path as
the client sent it). The format's own fields (`meta.native`) come first and are overridden by
these, so every format answers with the same core keys.
"""

from __future__ import annotations

import math
from typing import Any

from imageserver.formats.base import FrameMeta


def legacy_meta(meta: FrameMeta, *, fn: str, frame: int) -> dict[str, Any]:
    """The JSON-ready meta object of one frame; non-finite scalars are dropped, as jansson did."""
    fields: dict[str, Any] = dict(meta.native)
    fields.update(
        x_pixels_in_detector=meta.width_px,
        y_pixels_in_detector=meta.height_px,
        image_depth=meta.bit_depth // 8,
        first_frame=meta.first_frame,
        last_frame=meta.last_frame,
        frame=frame,
        fn=fn,
    )
    optional = {
        "beam_center_x": meta.beam_center_x_px,
        "beam_center_y": meta.beam_center_y_px,
        "detector_distance": meta.distance_m,
        "wavelength": meta.wavelength_a,
        "photon_energy": meta.photon_energy_ev,
        "x_pixel_size": meta.pixel_size_x_m,
        "y_pixel_size": meta.pixel_size_y_m,
        "saturation_value": meta.saturation_value,
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    return {
        key: _json_safe(value)
        for key, value in fields.items()
        if not (isinstance(value, float) and not math.isfinite(value))
    }


def _json_safe(value: Any) -> Any:
    """Non-finite numbers inside arrays become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
