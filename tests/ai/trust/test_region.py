"""The body region from the pixels, Body Part Examined as a hint: phantoms cropped to each
region, untidy attribute values, the real scans in ../shared, and the gate's decision."""

from __future__ import annotations

import pytest

from ai.body_phantom import REGION_Z, crop_region, make_body_phantom
from ai.pipeline import ClassicalCTPipeline
from ai.trust.features import sample
from ai.trust.gate import GateFacts, check
from ai.trust.region import canonical, hint_regions, pixel_regions
from ai.types import Volume
from tests.support import real_scans


@pytest.fixture(scope="module")
def body() -> Volume:
    return make_body_phantom(3)


def _regions(volume: Volume) -> frozenset[str]:
    grid, spacing = sample(volume)
    return pixel_regions(grid, spacing).regions


@pytest.mark.parametrize("region", list(REGION_Z))
def test_each_region_of_a_cropped_phantom_is_found(body: Volume, region: str) -> None:
    """A neck is a narrow body without a skull, as a child's trunk or a limb is: the pixels do not
    name it (the hint does, below)."""
    lo, hi = REGION_Z[region]
    assert _regions(crop_region(body, lo + 10, hi - 10)) == ({region} if region != "NECK" else set())


def test_the_whole_phantom_shows_every_region_but_the_neck(body: Volume) -> None:
    assert _regions(body) == set(REGION_Z) - {"NECK"}


def test_a_neck_is_what_its_label_says(body: Volume) -> None:
    neck = crop_region(body, 630, 690)
    domain = ClassicalCTPipeline.domain.model_copy(update={"body_width_mm": (0.0, 1e4)})
    assert not check(domain, GateFacts("CT", "NECK", 5.0), neck).applicable
    unlabelled = check(domain, GateFacts("CT", "PARTIALBODY", 5.0), neck)
    assert unlabelled.applicable and any("body region not determined" in n for n in unlabelled.notes)


@pytest.mark.parametrize(("value", "regions", "noted"), [
    ("ABD", {"ABDOMEN"}, False), ("CHEST_ABDOMEN", {"CHEST", "ABDOMEN"}, False), ("TORSO", {"CHEST", "ABDOMEN"}, False),
    ("Thorax", {"CHEST"}, False), ("BECKEN", {"PELVIS"}, False), ("abdomen-pelvis", {"ABDOMEN", "PELVIS"}, False),
    ("PARTIALBODY", None, False), ("", None, False), (None, None, False), ("BUIK", None, True),
])
def test_body_part_examined_synonyms(value: str | None, regions: set[str] | None, noted: bool) -> None:
    found, note = hint_regions(value)
    assert found == (frozenset(regions) if regions else None)
    assert (note is not None) == noted
    if noted:
        assert "not a value the node knows; ignored" in note  # type: ignore[operator]


def test_a_domain_s_values_become_regions() -> None:
    assert canonical(["CHESTABDOMEN", "PELVIS"]) == {"CHEST", "ABDOMEN", "PELVIS"}


@pytest.mark.parametrize("label", ["PARTIALBODY", "TORSO", "ABD", None])
def test_an_abdomen_labelled_untidily_is_analysed_as_its_pixels_show(body: Volume, label: str | None) -> None:
    abdomen = crop_region(body, 210, 370)
    decision = check(ClassicalCTPipeline.domain, GateFacts("CT", label, 5.0), abdomen)
    assert decision.applicable, decision.reasons
    assert decision.measures["regions"] == ["ABDOMEN"]


def test_a_head_labelled_chest_is_declined_and_the_contradiction_named(body: Volume) -> None:
    head = crop_region(body, 710, 890)
    decision = check(ClassicalCTPipeline.domain, GateFacts("CT", "CHEST", 5.0), head)
    assert not decision.applicable
    assert any(r.startswith("the pixels show HEAD, not ") for r in decision.reasons), decision.reasons
    assert any("Body Part Examined CHEST names CHEST, the pixels show HEAD: the pixels decide" in n for n in decision.notes)


def test_without_ct_pixels_the_hint_speaks(body: Volume) -> None:
    """An MR's intensities are not HU: its region is what Body Part Examined names."""
    mr = Volume(body.voxels, body.spacing, body.origin, body.direction, "MR")
    domain = ClassicalCTPipeline.domain.model_copy(update={"modality": ["MR"], "air_hu": (-1e9, 1e9), "fat_hu": (-1e9, 1e9),
                                                           "body_width_mm": (0.0, 1e4)})
    assert check(domain, GateFacts("MR", "ABDOMEN", 5.0), mr).applicable
    decision = check(domain, GateFacts("MR", "HEAD", 5.0), mr)
    assert not decision.applicable and "Body Part Examined HEAD names HEAD, not" in decision.reasons[0]


@pytest.mark.skipif(not real_scans.available(), reason="../shared/data/real-scans not present")
def test_the_real_scans() -> None:
    """The abdomen scan is abdomen; the 'torso' runs from the pelvis (iliac wings) to the lung
    bases, too little lung (6 mm of slices with 10 % lung) to count as chest."""
    assert _regions(real_scans.nifti_volume("ct_abdomen_3mm.nii.gz")) == {"ABDOMEN"}
    assert _regions(real_scans.nifti_volume("ct_torso_3mm.nii.gz")) == {"ABDOMEN", "PELVIS"}
    torso = real_scans.nifti_volume("ct_torso_3mm.nii.gz")
    decision = check(ClassicalCTPipeline.domain, GateFacts("CT", "PARTIALBODY", 3.0), torso)
    assert decision.applicable, decision.reasons
