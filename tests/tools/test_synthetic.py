from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread

from dicom_node.tools.synthetic import write_ct_series


def test_series_is_deterministic_and_geometric(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", 4, 16, 24, seed=5)
    b = write_ct_series(tmp_path / "b", 4, 16, 24, seed=5)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    slices = [dcmread(p) for p in a]
    assert len({s.SeriesInstanceUID for s in slices}) == 1
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    assert np.allclose(np.diff(z), 1.0)
    assert slices[0].pixel_array.shape == (16, 24)
    assert slices[0].pixel_array.min() < -900 and slices[0].pixel_array.max() > 0
