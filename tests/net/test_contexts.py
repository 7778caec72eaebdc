from __future__ import annotations

from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    MRImageStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node.net.contexts import ACCEPTED_TRANSFER_SYNTAXES, storage_contexts, verification_context


def test_a_ct_mr_department_is_covered() -> None:
    classes = {cx.abstract_syntax for cx in storage_contexts()}
    for uid in (CTImageStorage, MRImageStorage, EnhancedCTImageStorage, EnhancedMRImageStorage, SecondaryCaptureImageStorage,
                SegmentationStorage, ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage, RTStructureSetStorage):
        assert uid in classes
    assert verification_context().abstract_syntax == "1.2.840.10008.1.1"


def test_uncompressed_preferred_then_everything_else() -> None:
    assert ACCEPTED_TRANSFER_SYNTAXES[:2] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    assert len(ACCEPTED_TRANSFER_SYNTAXES) == len(set(ACCEPTED_TRANSFER_SYNTAXES))
    assert "1.2.840.10008.1.2.4.201" in ACCEPTED_TRANSFER_SYNTAXES  # HTJ2K lossless
