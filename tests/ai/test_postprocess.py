from __future__ import annotations

import numpy as np

from ai.postprocess import fill_holes, keep_largest, postprocess, remove_small


def test_islands_holes_and_largest() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 2  # organ
    labels[6:8, 6:8, 6:8] = 6  # a lesion inside it: must survive hole filling
    labels[4, 4, 4] = 0  # a hole in the organ
    labels[15:17, 15:17, 15:17] = 2  # a second, smaller organ piece
    labels[18, 18, 18] = 7  # one-voxel island
    out = postprocess(labels, (1.0, 1.0, 1.0), {7: 0.002}, keep_largest_labels=[2], fill_holes_labels=[2])
    assert out[4, 4, 4] == 2
    assert (out[6:8, 6:8, 6:8] == 6).all()
    assert (out[15:17, 15:17, 15:17] == 0).all()
    assert out[18, 18, 18] == 0
    assert np.array_equal(remove_small(labels, {}, (1, 1, 1)), labels)
    assert keep_largest(labels, [5]).sum() == labels.sum() and fill_holes(labels, []).sum() == labels.sum()


def test_a_lesion_is_kept_only_inside_its_host_organ() -> None:
    from ai.postprocess import require_host

    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 5:20] = 2  # liver
    labels[10:14, 10:14, 10:14] = 6  # a lesion inside it
    labels[10:14, 10:14, 15:21] = 6  # subcapsular: bulges out, mostly still in the liver
    labels[18:22, 18:22, 19:23] = 6  # on the liver's edge, more outside than in
    labels[1:3, 1:3, 1:3] = 6  # nowhere near the liver
    out = require_host(labels, {6: (2, 0.55)})
    assert (out[10:14, 10:14, 10:14] == 6).all() and (out[10:14, 10:14, 15:21] == 6).all()
    assert (out[18:22, 18:22, 19:23] != 6).all() and (out[1:3, 1:3, 1:3] == 0).all()
    assert np.array_equal(postprocess(labels, (1, 1, 1), {}, hosts={6: (2, 0.55)}), out)
