"""The ``deidentification`` section: the site key and the named profiles (PS3.15 E.3 options)
that de-identified forwarding and export use; privacy/ builds the engines from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .base import _Section

#: The options of PS3.15 E.3 a de-identification profile may name, with their code in CID 7050
#: (DCM). The configuration checks profile names against them; privacy/ applies them.
DEIDENTIFICATION_OPTIONS: dict[str, tuple[str, str]] = {
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_longitudinal_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
}


class SafePrivateSection(_Section):
    """A private element a profile keeps under retain_safe_private: group (odd, hex), private
    creator, element offset in the creator's block (hex 00-FF)."""

    group: str = Field(pattern=r"^[0-9A-Fa-f]{4}$")
    creator: str = Field(min_length=1, max_length=64)
    element: str = Field(pattern=r"^[0-9A-Fa-f]{2}$")

    @field_validator("group")
    @classmethod
    def _odd(cls, value: str) -> str:
        if int(value, 16) % 2 == 0:
            raise ValueError(f"group {value} is even: private groups are odd")
        return value


class DeidentificationProfileSection(_Section):
    """A named de-identification profile: PS3.15 E.3 options in snake_case (privacy/table.py
    lists them), what happens to instances that may carry identity burned into their pixels
    (``hold``: held back, logged; ``send``: the site vouches that its modalities burn in
    nothing), and the private elements retain_safe_private keeps."""

    options: list[str] = []
    burned_in: Literal["hold", "send"] = "hold"
    safe_private: list[SafePrivateSection] = []

    @field_validator("options")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [o for o in value if o not in DEIDENTIFICATION_OPTIONS]
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(DEIDENTIFICATION_OPTIONS)}. The node does not "
                             "alter pixel data: clean_pixel_data and clean_recognizable_visual_features are not offered, "
                             "and instances that may carry burned-in identity are held back (burned_in: hold)")
        if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= set(value):
            raise ValueError("retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other")
        return value


class DeidentificationSection(_Section):
    """De-identified forwarding and export (privacy/). ``key_file``: the site secret the
    pseudonyms are made from (at least 32 bytes; never in this file)."""

    key_file: Path | None = None
    profiles: dict[str, DeidentificationProfileSection] = {}
