from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta

from dicom_node.net.patches import pynetdicom_tuning
from dicom_node.service.node import Node
from dicom_node.tools.synthetic import write_ct_series

from ..test_storage_scp import send


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "ts"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # odd-length UIDs are padded
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.12345678901234567890", "1.2.840.10008.1.2.4.90"),
        ("1.2.840.10008.5.1.4.1.1.88.33", "9" * 64, "1.2.840.10008.1.2"),
    ],
)
def test_file_meta_encoding_equals_pydicom(sop_class: str, sop_instance: str, ts: str) -> None:
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=ts)
    reference = io.BytesIO()
    write_file_meta_info(reference, meta)
    assert pynetdicom_tuning.encode_file_meta(meta) == reference.getvalue()


def test_unusual_meta_falls_back_to_pydicom() -> None:
    meta = create_file_meta(sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4", transfer_syntax="1.2.840.10008.1.2.1")
    meta.add_new(0x00020016, "AE", ["A", "B"])  # multi-valued: not for the direct encoder
    assert pynetdicom_tuning.encode_file_meta(meta) is None
    out = io.BytesIO()
    pynetdicom_tuning._write_file_meta_info(out, create_file_meta(sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4",
                                                                  transfer_syntax="1.2.840.10008.1.2.1"))
    assert out.getvalue()[4:6] == b"UL"


def test_tuned_listener_serves_back_to_back_associations(node: Node, tmp_path: Path) -> None:
    """Many short associations in a row: each is released and torn down, none hangs."""
    files = write_ct_series(tmp_path / "s", 20, 16, 16)
    started = time.monotonic()
    for path in files:
        assert send(node.port, [path]) == [0]
    assert time.monotonic() - started < 60
    assert node.index.studies()[0]["series"][0]["instance_count"] == 20


def test_requestor_never_waits_out_its_timeout(node: Node, tmp_path: Path) -> None:
    """Regression: the reactor's wait must not swallow the wake-up meant for send_c_store.

    Queue.put wakes one waiter; when the reactor's idle wait took it, send_c_store sat out its
    whole DIMSE timeout before finding its response. 40 sends with a 5 s timeout would then
    take minutes; healthy, they take well under a second each.
    """
    from dicom_node.config import Peer
    from dicom_node.net.scu import send_files

    files = write_ct_series(tmp_path / "s", 40, 16, 16)
    peer = Peer(name="node", ae_title="AI_NODE", host="127.0.0.1", port=node.port)
    started = time.monotonic()
    for _ in range(3):
        report = send_files("TEST_SCU", peer, files, timeout=5)
        assert report.sent == 40
    assert time.monotonic() - started < 4.5, "a C-STORE waited for its DIMSE timeout"


def test_unusual_command_sets_fall_back_to_pydicom() -> None:
    from pynetdicom.dsutils import encode

    from .test_store_messages import command_set_of

    command_set = command_set_of("C_STORE_RSP", MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.3",
                                 AffectedSOPInstanceUID="1.2.3.4", Status=0xC211, ErrorComment="caf\u00e9 ferm\u00e9")
    assert pynetdicom_tuning._encode(command_set, True, True) == encode(command_set, True, True)


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.826.0.1.3680043.8.498.12345678901234567890"])
def test_streamed_file_meta_equals_pynetdicoms(instance: str) -> None:
    reference = io.BytesIO()
    write_file_meta_info(reference, create_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=instance,
                                                     transfer_syntax="1.2.840.10008.1.2.4.90"))
    lazy = pynetdicom_tuning._create_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=instance,
                                               transfer_syntax="1.2.840.10008.1.2.4.90")
    fast = io.BytesIO()
    pynetdicom_tuning._write_file_meta_info(fast, lazy)
    assert fast.getvalue() == reference.getvalue()
    slow = io.BytesIO()
    write_file_meta_info(slow, lazy.dataset())
    assert slow.getvalue() == reference.getvalue()
