"""FrameMeta rendered with the legacy field names and units."""

from __future__ import annotations

import json

import pytest

from imageserver.formats.base import FrameMeta
from imageserver.formats.legacy import legacy_meta


def test_core_fields_override_native_and_units_are_kept() -> None:
    meta = FrameMeta(
        format_name="eiger",
        width_px=4148,
        height_px=4362,
        bit_depth=32,
        first_frame=1,
        last_frame=90,
        beam_center_x_px=2087.5,
        beam_center_y_px=2174.25,
        distance_m=0.2,
        wavelength_a=0.97934,
        pixel_size_x_m=75e-6,
        pixel_size_y_m=75e-6,
        saturation_value=1048576,
        native={"x_pixels_in_detector": 1, "software_version": "1.8.0", "omega": [0.0, 0.1]},
    )
    fields = legacy_meta(meta, fn="data/x_master.h5", frame=7)
    assert fields["x_pixels_in_detector"] == 4148
    assert fields["y_pixels_in_detector"] == 4362
    assert fields["image_depth"] == 4
    assert (fields["first_frame"], fields["last_frame"], fields["frame"]) == (1, 90, 7)
    assert fields["fn"] == "data/x_master.h5"
    assert fields["beam_center_x"] == 2087.5
    assert fields["detector_distance"] == 0.2
    assert fields["photon_energy"] == pytest.approx(12398.4193 / 0.97934)
    assert fields["software_version"] == "1.8.0"
    assert fields["omega"] == [0.0, 0.1]


def test_missing_values_are_absent_and_json_has_no_nan() -> None:
    meta = FrameMeta(
        format_name="tiff",
        width_px=10,
        height_px=20,
        bit_depth=16,
        native={"bad": float("nan"), "arr": [1.0, float("inf")]},
    )
    fields = legacy_meta(meta, fn="a.tif", frame=1)
    for key in ("beam_center_x", "wavelength", "photon_energy", "detector_distance", "bad"):
        assert key not in fields
    assert fields["arr"] == [1.0, None]
    json.dumps(fields, allow_nan=False)
