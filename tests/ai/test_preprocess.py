from __future__ import annotations

import numpy as np
import pytest

from ai.phantom import make_phantom
from ai.preprocess import apply_steps, body_crop, crop, denoise, resample, resample_labels, window, zscore
from ai.types import Volume


def _oblique() -> np.ndarray:
    t = np.deg2rad(15)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def test_resample_keeps_physical_alignment() -> None:
    v = Volume(np.zeros((10, 20, 30), np.float32), (3.0, 1.5, 0.75), (5.0, -7.0, 2.0), _oblique())
    r = resample(v, (2.0, 2.0, 2.0))
    assert r.shape == (15, 15, 11)
    # The grid's outer edges stay put: first voxel centre minus half a voxel is the same point.
    edge_old = v.index_to_patient(np.array([-0.5, -0.5, -0.5]))
    edge_new = r.index_to_patient(np.array([-0.5, -0.5, -0.5]))
    assert edge_new == pytest.approx(edge_old, abs=1e-6)


def test_model_grid_labels_map_back_voxel_aligned() -> None:
    """Labels made on a 2 mm model grid, resampled onto the input grid, land where the same
    anatomy sampled directly on the input grid is: centroids agree to a tenth of a voxel."""
    fine = make_phantom(2, shape=(40, 80, 80), spacing=(2.5, 1.0, 1.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    coarse = make_phantom(2, shape=(50, 40, 40), spacing=(2.0, 2.0, 2.0), liver_lesions=(0, 0), lung_nodules=(0, 0))
    assert resample(fine.volume, (2.0, 2.0, 2.0)).shape == coarse.volume.shape
    back = resample_labels(coarse.labels, fine.labels.shape)
    for label in (1, 2, 5):
        a, b = back == label, fine.labels == label
        shift_mm = (np.argwhere(a).mean(0) - np.argwhere(b).mean(0)) * np.asarray(fine.volume.spacing)
        assert np.abs(shift_mm).max() < 0.5, f"label {label} shifted by {shift_mm} mm"  # half a 2 mm voxel would be 1 mm
        if label != 5:  # the thin spine loses more to partial volume
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_intensity_ops_and_unknown_op() -> None:
    v = Volume(np.array([[[-2000.0, 0.0, 2000.0]]], np.float32), (1.0, 1.0, 1.0))
    out = apply_steps(v, [{"op": "clip", "min": -1000, "max": 1000}, {"op": "scale", "factor": 0.001}])
    assert out.voxels.ravel().tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert window(v, 40, 400).voxels.ravel().tolist() == pytest.approx([0.0, 0.4, 1.0])
    z = zscore(Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), (1.0, 1.0, 1.0)))
    assert abs(float(z.voxels.mean())) < 1e-5 and float(z.voxels.std()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="unknown preprocessing op 'sharpen'"):
        apply_steps(v, [{"op": "sharpen"}])
    with pytest.raises(ValueError, match="preprocessing op 'clip'"):
        apply_steps(v, [{"op": "clip", "low": 1}])


@pytest.mark.parametrize("method", ["bilateral", "anisotropic"])
def test_denoising_preserves_edges(method: str) -> None:
    rng = np.random.default_rng(0)
    clean = np.zeros((8, 32, 32), np.float32)
    clean[:, :, 16:] = 200.0
    noisy = Volume(clean + rng.normal(0, 15, clean.shape).astype(np.float32), (1.0, 1.0, 1.0))
    out = denoise(noisy, method=method).voxels
    assert out[:, :, :14].std() < 0.8 * noisy.voxels[:, :, :14].std()  # flat region smoother
    assert abs(float(out[:, :, 17:].mean() - out[:, :, :15].mean()) - 200) < 10  # edge height kept


def test_body_crop_moves_origin() -> None:
    p = make_phantom(4, shape=(20, 128, 128), spacing=(5.0, 4.0, 4.0))
    region = body_crop(p.volume, multiple=8)
    assert all((b - a) % 8 == 0 or b == n for a, b, n in zip(region.start, region.stop, p.volume.shape))
    c = crop(p.volume, region)
    assert c.index_to_patient(np.zeros(3)) == pytest.approx(p.volume.index_to_patient(np.asarray(region.start, float)))
    assert np.array_equal(region.paste(c.voxels, p.volume.shape, fill=-1000)[tuple(slice(a, b) for a, b in zip(region.start, region.stop))], c.voxels)
