"""The input gate on phantoms (all still analysed) and on synthetic edge cases; every threshold
of a domain moved until it refuses what it accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ai.phantom import make_phantom
from ai.pipeline import ClassicalCTPipeline
from ai.registry import ModelRegistry
from ai.trust.domain import Domain
from ai.trust.gate import GateFacts, check
from ai.types import Volume

FACTS = GateFacts(modality="CT", body_part_examined="CHEST", slice_thickness_mm=2.5, contrast_agent="iodine")


@pytest.fixture(scope="module")
def organs() -> Domain:
    return ModelRegistry().get("ct-organs").data.domain


def _phantom(seed: int, thickness: float = 2.5, pixel: float = 1.5, size: int = 256) -> Volume:
    return make_phantom(seed, shape=(int(300 / thickness), size, size), spacing=(thickness, pixel, pixel)).volume


@pytest.fixture(scope="module")
def phantom() -> Volume:
    return _phantom(7100)


@pytest.mark.parametrize("seed", [7101, 7102, 7103, 7104])
def test_held_out_phantoms_pass_both_pipelines(organs: Domain, seed: int) -> None:
    rng = np.random.default_rng(seed)
    volume = _phantom(seed, thickness=float(rng.choice([1.25, 2.5, 5.0])), pixel=float(rng.uniform(1.2, 2.0)))
    for domain in (organs, ClassicalCTPipeline.domain):
        decision = check(domain, FACTS, volume)
        assert decision.applicable, decision.reasons


def test_a_small_test_phantom_passes(organs: Domain) -> None:
    """The grids the end-to-end tests use (128 x 128 at 2-3 mm: a 180 mm body) stay in."""
    volume = make_phantom(9200, shape=(60, 128, 128), spacing=(5.0, 3.0, 3.0)).volume
    assert check(organs, FACTS, volume).applicable


def test_an_mr_labelled_ct_is_refused_by_its_pixels(organs: Domain, phantom: Volume) -> None:
    mr_like = phantom.with_voxels(np.clip((phantom.voxels + 1000) * 0.6, 0, None).astype(np.float32))
    for domain in (organs, ClassicalCTPipeline.domain):
        decision = check(domain, FACTS, mr_like)
        assert not decision.applicable
        assert "not Hounsfield units" in decision.reasons[0]


def test_ten_millimetre_slices_are_refused(organs: Domain) -> None:
    volume = _phantom(7105, thickness=10.0)
    for domain in (organs, ClassicalCTPipeline.domain):
        decision = check(domain, GateFacts("CT", "CHEST", 10.0, "iodine"), volume)
        assert any("10 mm thick" in reason for reason in decision.reasons)
    # the attribute alone decides nothing against the geometry: 2.5 mm spacing, 10 mm SliceThickness
    assert not check(organs, GateFacts("CT", "CHEST", 10.0, "iodine"), _phantom(7106)).applicable


def test_a_head_ct_is_refused(organs: Domain) -> None:
    """A head (narrow, ringed by bone) labelled HEAD: neither pipeline was made for it."""
    rng = np.random.default_rng(3)
    k, j, i = np.mgrid[0:40, 0:200, 0:200]
    r = np.sqrt(((j - 100) * 1.0) ** 2 + ((i - 100) * 0.85) ** 2)
    hu = np.where(r < 70, 35.0, -1000.0) + np.where((r >= 70) & (r < 78), 1300.0, 0.0) + rng.normal(0, 8, (40, 200, 200))
    head = Volume(hu.astype(np.float32), (3.0, 1.0, 1.0))
    for domain in (organs, ClassicalCTPipeline.domain):
        decision = check(domain, GateFacts("CT", "HEAD", 3.0), head)
        assert any(reason.startswith("the pixels show HEAD, not") for reason in decision.reasons), decision.reasons
    unnamed = check(organs, GateFacts("CT", None, 3.0), head)  # no attribute: the pixels still say no
    assert not unnamed.applicable
    assert any("wide" in reason or "unlike the training data" in reason for reason in unnamed.reasons)


def test_missing_rescale_is_refused_when_the_pixels_say_so(organs: Domain, phantom: Volume) -> None:
    """Stored values (HU + 1024) read without their Rescale Intercept: air at +24."""
    stored = phantom.with_voxels(phantom.voxels + 1024.0)
    facts = GateFacts("CT", "CHEST", 2.5, "iodine", has_rescale=False)
    for domain in (organs, ClassicalCTPipeline.domain):
        decision = check(domain, facts, stored)
        assert not decision.applicable and "no Rescale Slope/Intercept" in decision.reasons[0]
    # the attribute alone is a note when the pixels are Hounsfield units
    decision = check(ClassicalCTPipeline.domain, facts, phantom)
    assert decision.applicable and "no Rescale Slope/Intercept" in decision.notes[0]


def test_contrast_is_a_note_not_a_verdict(organs: Domain, phantom: Volume) -> None:
    decision = check(organs, GateFacts("CT", "CHEST", 2.5, None), phantom)
    assert decision.applicable
    assert "no contrast agent recorded" in decision.notes[0]


def _moved(domain: Domain, **changes: Any) -> Domain:
    return domain.model_copy(update=changes)


@pytest.mark.parametrize(("change", "words"), [
    ({"modality": ["MR"]}, "Modality CT is not MR"),
    ({"slice_thickness_mm": (0.5, 2.0)}, "thick"),
    ({"pixel_spacing_mm": (0.3, 1.0)}, "pixels 1.5 mm apart"),
    ({"body_width_mm": (400.0, 600.0)}, "wide"),
    ({"body_regions": ["HEAD"]}, "the pixels show ABDOMEN, CHEST, not HEAD"),
    ({"air_hu": (-900.0, -800.0)}, "not Hounsfield units"),
    ({"fat_hu": (-60.0, -30.0)}, "fat reads"),
])
def test_every_domain_threshold_moves_the_decision(organs: Domain, phantom: Volume, change: dict[str, Any],
                                                   words: str) -> None:
    assert check(organs, FACTS, phantom).applicable
    decision = check(_moved(organs, **change), FACTS, phantom)
    assert not decision.applicable and any(words in reason for reason in decision.reasons), decision.reasons


def test_the_intensity_threshold_moves_the_decision(organs: Domain, phantom: Volume) -> None:
    assert organs.intensity is not None
    distance = check(organs, FACTS, phantom).measures["distance"]
    tighter = organs.intensity.model_copy(update={"max_distance": distance * 0.9})
    decision = check(_moved(organs, intensity=tighter), FACTS, phantom)
    assert not decision.applicable and "unlike the training data" in decision.reasons[0]


def test_an_empty_domain_range_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="slice_thickness_mm: the lower bound 5.0 is above"):
        Domain(modality=["CT"], slice_thickness_mm=(5.0, 1.0))
