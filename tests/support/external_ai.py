"""An "external AI service" for the privacy tests: a pynetdicom Storage SCP that keeps what it is
sent (to scan it for identity) and, asked to, segments a received CT series with highdicom and
sends the SEG back to the node by C-STORE, as a cloud AI vendor's gateway would."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import SegmentationStorage

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress", "OperatorsName",
               "ReferringPhysicianName", "AccessionNumber", "StationName", "PerformingPhysicianName", "StudyID",
               "OtherPatientIDs", "PatientAddress", "DeviceSerialNumber")


class ExternalAI:
    def __init__(self, ae_title: str = "EXTAI") -> None:
        self.ae_title = ae_title
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()

    def segment_and_send_back(self, node_port: int, node_ae: str = "AI_NODE") -> Dataset:
        """A SEG of the received CT series (everything above -300 HU: the body), sent to the node."""
        with self._lock:
            images = sorted([d for d in self.received if d.Modality == "CT"], key=lambda d: int(d.InstanceNumber))
        mask = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) > -300 for d in images])
        description = hd.seg.SegmentDescription(
            segment_number=1, segment_label="Body", segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=Code("38266002", "SCT", "Entire body"), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="External body finder", version="1.0", family=codes.cid7162.ArtificialIntelligence))
        seg = hd.seg.Segmentation(
            source_images=images, pixel_array=mask.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=700,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="External AI Inc.",
            manufacturer_model_name="Body finder", software_versions="1.0", device_serial_number="EXT-1")
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(SegmentationStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node_port, ae_title=node_ae)
        assert assoc.is_established, "the node refused the external AI's association"
        try:
            status = assoc.send_c_store(seg)
            assert int(status.Status) == 0, f"the node answered 0x{int(status.Status):04X}"
        finally:
            assoc.release()
        return seg


def add_identity(path: Path, extra: dict[str, Any] | None = None) -> None:
    """Give a synthetic CT file the identifying attributes a real one carries (and a private tag)."""
    from pydicom import dcmread

    ds = dcmread(path)
    ds.PatientName = "Testpatient^Gertrud"
    ds.PatientBirthDate = "19480312"
    ds.InstitutionName = "St. Example Hospital"
    ds.InstitutionAddress = "1 Example Road, Exampletown"
    ds.OperatorsName = "Radiographer^Rita"
    ds.ReferringPhysicianName = "Referrer^Robert"
    ds.AccessionNumber = "ACC-778899"
    ds.StationName = "CT-ROOM-3"
    ds.StudyDescription = "CT abdomen Testpatient"
    ds.StudyDate = "20260310"
    ds.add_new(0x00290010, "LO", "VENDOR PRIVATE")
    ds.add_new(0x00291001, "LO", "Testpatient Gertrud 19480312")
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def identity_found(received: list[Dataset], originals: set[str]) -> list[str]:
    """Every element, at any depth, of the received instances whose value is one of ``originals``
    (names, IDs, UIDs, dates of the original study) or contains one of the identifying words."""
    found: list[str] = []

    def walk(ds: Dataset, where: str) -> None:
        for element in ds:
            if element.VR == "SQ":
                for n, item in enumerate(element.value or []):
                    walk(item, f"{where}{element.keyword or element.tag}[{n}].")
                continue
            if element.VR in ("OB", "OW", "UN") or element.value in (None, ""):
                continue
            values = element.value if isinstance(element.value, list | tuple) or hasattr(element.value, "__iter__") \
                and not isinstance(element.value, str | bytes) else [element.value]
            for value in values:
                text = str(value)
                if text in originals or any(o in text for o in originals if len(o) >= 6):
                    found.append(f"{where}{element.keyword or element.tag} = {text!r}")

    for number, ds in enumerate(received):
        walk(ds, f"#{number} ")
        walk(ds.file_meta, f"#{number} meta ")
    return found


def table_violations(received: list[Dataset], options: frozenset[str]) -> list[str]:
    """Every attribute, at any depth, that Table E.1-1 under ``options`` says must not be there
    (action X), and every private attribute: the received instances scanned against the table."""
    from dicom_node.privacy.table import load_table

    table = load_table()
    found: list[str] = []

    def walk(ds: Dataset, sop_class: str | None, where: str) -> None:
        for element in ds:
            if element.tag.is_private:
                found.append(f"{where}{element.tag} (private)")
                continue
            row = table.row(int(element.tag))
            if row is not None and table.action(row, options, int(element.tag), sop_class).code == "X":
                found.append(f"{where}{element.keyword or element.tag} (row {row.tag}: X)")
            if element.VR == "SQ":
                for n, item in enumerate(element.value or []):
                    walk(item, None, f"{where}{element.keyword}[{n}].")

    for number, ds in enumerate(received):
        walk(ds, str(ds.SOPClassUID), f"#{number} ")
    return found
