from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.config import Durability
from dicom_node.errors import DiskFullError
from dicom_node.storage.header import read_header
from dicom_node.storage.store import InstanceStore
from dicom_node.tools.synthetic import write_ct_series


def _received(store: InstanceStore, source: Path) -> Path:
    """A file as the listener leaves it: fully written, in .incoming."""
    target = store.incoming / f".recv-{source.name}"
    target.write_bytes(source.read_bytes())
    return target


@pytest.mark.parametrize("durability", [Durability.FSYNC, Durability.NONE])
def test_commit_places_file_under_study_series_instance(tmp_path: Path, durability: Durability) -> None:
    [source] = write_ct_series(tmp_path / "src", 1, 32, 32)
    store = InstanceStore(tmp_path / "storage", durability)
    header = read_header(source)
    final = store.commit(_received(store, source), header)
    assert final == store.root / header.study_instance_uid / header.series_instance_uid / f"{header.sop_instance_uid}.dcm"
    assert final.read_bytes() == source.read_bytes()
    assert list(store.incoming.iterdir()) == []
    assert list(store.iter_files()) == [final]


def test_commit_replaces_atomically(tmp_path: Path) -> None:
    [source] = write_ct_series(tmp_path / "src", 1, 32, 32)
    store = InstanceStore(tmp_path / "storage")
    header = read_header(source)
    first = store.commit(_received(store, source), header)
    changed = store.incoming / ".recv-changed"
    changed.write_bytes(source.read_bytes()[:-2] + b"\x01\x00")
    second = store.commit(changed, header)
    assert first == second
    assert second.read_bytes().endswith(b"\x01\x00")


def test_commit_with_the_receivers_open_descriptor_and_a_series_folder_deleted_by_hand(tmp_path: Path) -> None:
    import shutil

    sources = write_ct_series(tmp_path / "src", 2, 32, 32)
    store = InstanceStore(tmp_path / "storage")
    first = _received(store, sources[0])
    with open(first, "rb") as handle:  # the listener fsyncs through the descriptor it holds
        placed = store.commit(first, read_header(sources[0]), fd=handle.fileno())
    assert placed.read_bytes() == sources[0].read_bytes()
    shutil.rmtree(placed.parent.parent)  # an operator removes the study while the node runs
    second = store.commit(_received(store, sources[1]), read_header(sources[1]))
    assert second.parent == placed.parent and second.read_bytes() == sources[1].read_bytes()


def test_leftovers_are_removed_and_never_listed(tmp_path: Path) -> None:
    [source] = write_ct_series(tmp_path / "src", 1, 32, 32)
    store = InstanceStore(tmp_path / "storage")
    final = store.commit(_received(store, source), read_header(source))
    (store.incoming / ".recv-abc.dcm").write_bytes(b"partial")
    (final.parent / ".x.part").write_bytes(b"partial")
    assert list(store.iter_files()) == [final]
    assert store.remove_leftovers() == 2
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_free_space_watermark(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage", min_free_bytes=2**62)
    with pytest.raises(DiskFullError, match="under the .* MiB watermark"):
        store.check_free_space()
    InstanceStore(tmp_path / "storage", min_free_bytes=1).check_free_space()


def test_write_bytes_is_atomic_and_durable(tmp_path: Path) -> None:
    [source] = write_ct_series(tmp_path / "src", 1, 32, 32)
    store = InstanceStore(tmp_path / "storage")
    final = store.write_bytes(source.read_bytes(), read_header(source))
    assert final.read_bytes() == source.read_bytes()
    assert not any(name.endswith(".part") for _, _, names in os.walk(store.root) for name in names)
