from __future__ import annotations

import numpy as np

from ai.phantom import BONE, KIDNEY, LIVER, LIVER_LESION, LUNG, LUNG_NODULE, SPLEEN, make_phantom


def test_seeded_and_labelled_with_realistic_hu() -> None:
    a = make_phantom(11, shape=(60, 96, 96), spacing=(5.0, 4.0, 4.0), liver_lesions=(2, 2), lung_nodules=(2, 2))
    b = make_phantom(11, shape=(60, 96, 96), spacing=(5.0, 4.0, 4.0), liver_lesions=(2, 2), lung_nodules=(2, 2))
    assert np.array_equal(a.volume.voxels, b.volume.voxels) and np.array_equal(a.labels, b.labels)
    hu = a.volume.voxels
    medians = {label: float(np.median(hu[a.labels == label])) for label in (LUNG, LIVER, SPLEEN, KIDNEY, BONE, LIVER_LESION, LUNG_NODULE)}
    assert medians[LUNG] < -700 and 80 < medians[LIVER] < 120 and medians[BONE] > 400
    # Portal-venous enhancement: kidneys above spleen above liver above muscle.
    assert medians[KIDNEY] > medians[SPLEEN] + 25 and medians[SPLEEN] > medians[LIVER] + 10
    assert medians[LIVER_LESION] < medians[LIVER] - 25  # hypodense
    assert medians[LUNG_NODULE] > medians[LUNG] + 300  # solid nodules (partial volume at 4 mm)
    assert {l.label for l in a.lesions} == {LIVER_LESION, LUNG_NODULE}
    assert float(np.median(hu[0, :3, :3])) < -900  # air outside the body


def test_random_grid_when_not_given() -> None:
    p = make_phantom(3, shape=(10, 64, 64))
    assert 0.6 <= p.volume.spacing[1] <= 1.0 and p.volume.spacing[0] in (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
