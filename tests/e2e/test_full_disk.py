"""Full disks for real: the node's storage and index on a small tmpfs the test mounts (as root;
unmounted at the end). Under the watermark: 0xA700 before anything is written. ENOSPC in the
middle of a file: a failure status, nothing partial visible, no row. The index's disk full: no
Success without the row. The node stays up and stores again once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.config import NodeConfig
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..conftest import TEST_SCU

SIZE_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {SIZE_MB} MB tmpfs (the full-disk tests run as root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_mb: float) -> Path:
    """A filler file that leaves about ``leave_mb`` free."""
    filler = disk / "filler.bin"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "ab") as fh:
        fh.write(b"\0" * max(0, int(free - leave_mb * 2**20)))
    return filler


def send(port: int, files: list[Path]) -> list[int | None]:
    ae = AE(ae_title=TEST_SCU)
    ae.add_requested_context(Verification)
    for path in files:
        ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="AI_NODE")
    assert assoc.is_established
    statuses: list[int | None] = []
    for path in files:
        status = assoc.send_c_store(path)
        statuses.append(int(status.Status) if "Status" in status else None)
    assert int(assoc.send_c_echo().Status) == 0  # the association and the node are still up
    assoc.release()
    return statuses


def visible(disk: Path) -> list[Path]:
    """Stored files a reader would see (not in .incoming, not a .part)."""
    storage = disk / "storage"
    return [p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts and not p.name.startswith(".")]


def node_on(disk: Path, make_config: Callable[..., NodeConfig], start_node: Callable[[NodeConfig], Node],
            min_free_mb: int) -> Node:
    return start_node(make_config(storage={"path": str(disk / "storage"), "min_free_mb": min_free_mb},
                                  index={"path": str(disk / "index.sqlite")}))


def test_under_the_watermark_a700_and_storing_resumes(small_disk: Path, make_config: Callable[..., NodeConfig],
                                                      start_node: Callable[[NodeConfig], Node], tmp_path: Path) -> None:
    node = node_on(small_disk, make_config, start_node, min_free_mb=4)
    files = write_ct_series(tmp_path / "s", 3, 64, 64)
    filler = fill(small_disk, leave_mb=3)
    assert send(node.port, files) == [0xA700] * 3
    assert visible(small_disk) == [] and node.index.query("SELECT count(*) AS n FROM instances")[0]["n"] == 0
    filler.unlink()
    assert send(node.port, files) == [0, 0, 0]
    assert len(visible(small_disk)) == 3


def test_enospc_in_the_middle_of_a_file_leaves_nothing_partial(small_disk: Path, make_config: Callable[..., NodeConfig],
                                                                start_node: Callable[[NodeConfig], Node],
                                                                tmp_path: Path) -> None:
    node = node_on(small_disk, make_config, start_node, min_free_mb=0)  # no watermark: the disk itself runs out
    small = write_ct_series(tmp_path / "small", 2, 64, 64, seed=1)
    big = write_ct_series(tmp_path / "big", 1, 2048, 2048, seed=2)  # 8 MiB
    filler = fill(small_disk, leave_mb=4)
    statuses = send(node.port, small + big)
    assert statuses[:2] == [0, 0]
    assert statuses[2] == 0xA700, f"0x{statuses[2]:04X}" if statuses[2] is not None else statuses
    big_uid = str(dcmread(big[0], stop_before_pixels=True).SOPInstanceUID)
    assert node.index.instance(big_uid) is None
    assert sorted(p.stem for p in visible(small_disk)) == sorted(str(dcmread(f).SOPInstanceUID) for f in small)
    assert not list((small_disk / "storage" / ".incoming").iterdir())  # the partial receive is gone
    filler.unlink()
    assert send(node.port, big) == [0]
    assert node.index.instance(big_uid) is not None


def test_the_index_disk_full_means_no_success_without_the_row(small_disk: Path, make_config: Callable[..., NodeConfig],
                                                              start_node: Callable[[NodeConfig], Node],
                                                              tmp_path: Path) -> None:
    """The instances go to a roomy disk; the index alone is on the full one."""
    roomy = tmp_path / "roomy"
    node = start_node(make_config(storage={"path": str(roomy), "min_free_mb": 0},
                                  index={"path": str(small_disk / "index.sqlite")}))
    files = write_ct_series(tmp_path / "s", 40, 64, 64, seed=3)
    filler = fill(small_disk, leave_mb=0)
    statuses = send(node.port, files)
    failed = [f for f, s in zip(files, statuses) if s != 0]
    assert failed, "the index never ran out of room: the test filled too little"
    for path, status in zip(files, statuses):
        row = node.index.instance(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        assert (status == 0) == (row is not None), f"status {status} and row {row is not None}"
    assert all(s == 0xA702 for s in statuses if s != 0), [f"0x{s:04X}" for s in statuses if s]
    filler.unlink()
    assert send(node.port, failed) == [0] * len(failed)


def test_running_out_anywhere_in_a_data_set_is_answered_searched(small_disk: Path, make_config: Callable[..., NodeConfig],
                                                                 start_node: Callable[[NodeConfig], Node],
                                                                 tmp_path: Path) -> None:
    """Seeded: random room left, instance sizes and maximum PDU lengths, a core kept busy. Every
    request gets Success (file and row) or a refusal (0xA700, or 0xA702 when the index on the
    same disk had no room; neither file nor row), never an abort; the node keeps answering."""
    import random

    from ..support import stress

    seed = int(os.environ.get("DICOM_NODE_STRESS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nfull-disk search seed {seed} (DICOM_NODE_STRESS_SEED={seed} replays it)")
    rng = random.Random(seed)
    node = node_on(small_disk, make_config, start_node, min_free_mb=0)
    pool = stress.make_templates(tmp_path / "templates")
    templates, weights = [t for t, _ in pool], [w for _, w in pool]
    number, counts = 0, {0: 0, 0xA700: 0, 0xA702: 0}
    with stress.cpu_burner(True, 300):
        for round_ in range(8):
            filler = fill(small_disk, leave_mb=rng.uniform(0.05, 2.5))
            ae = AE(ae_title=TEST_SCU)
            ae.add_requested_context(templates[0].sop_class, "1.2.840.10008.1.2.1")
            ae.add_requested_context(Verification)
            ae.maximum_pdu_size = rng.choice([16384, 65536, 1 << 20, 0])
            assoc = ae.associate("127.0.0.1", node.port, ae_title="AI_NODE")
            assert assoc.is_established, f"seed {seed}"
            for _ in range(rng.randint(3, 10)):
                template = rng.choices(templates, weights)[0]
                number += 1
                uid, path = template.write(tmp_path / "send", number)
                status = assoc.send_c_store(path)
                code = int(status.Status) if "Status" in status else None
                # 0xA702: the index (on the same small disk) had no room for the row
                assert code in (0, 0xA700, 0xA702), f"seed {seed}, round {round_}: {uid} got {code}"
                counts[code] += 1
                stored = node.index.instance(uid)
                assert (code == 0) == (stored is not None), f"seed {seed}: {uid} status {code:#06x}, row {stored is not None}"
                assert (code == 0) == any(p.stem == uid for p in visible(small_disk)), f"seed {seed}: {uid}"
            assert assoc.is_established and int(assoc.send_c_echo().Status) == 0, f"seed {seed}"
            assoc.release()
            filler.unlink()
            for stored in visible(small_disk):  # room for the next round
                stored.unlink()
    assert not list((small_disk / "storage" / ".incoming").iterdir())
    print(f"{counts[0]} stored, {counts[0xA700]} refused 0xA700 (disk), {counts[0xA702]} refused 0xA702 (index), 0 aborted")
