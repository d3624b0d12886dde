"""The prediction as a BINARY DICOM Segmentation (highdicom) referencing every source instance."""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from ctseg.dicom import DicomError
from ctseg.errors import CtsegError
from ctseg.predict import ood
from ctseg.predict.inference import Prediction
from ctseg.predict.series import Series, copy_header
from ctseg.serving import ServedModel

# CID 7150 "Segmentation Property Categories"; pydicom's codedict has two codes under this name
ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")
# Type 2 attributes highdicom copies from the source; IRCAD files lack some, so they go in empty
STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime", "ReferringPhysicianName")
# LossyImageCompressionMethod (C.7.6.1.1.5) of the lossy transfer syntaxes, for sources that omit it
LOSSY_METHODS = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
                 "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
                 "1.2.840.10008.1.2.4.203": "ISO_15444_15"}


def _with_type2_study_attributes(header: pydicom.Dataset, name: str = "") -> pydicom.Dataset:
    """The header as highdicom needs it: empty Type 2 attributes, and for a lossy source the compression
    method, which highdicom 0.22 copies unconditionally (seg/sop.py:1644-1653) though sources omit it:
    taken from the transfer syntax, else a DicomError."""
    missing = [k for k in STUDY_TYPE2 if k not in header]
    lossy = str(header.get("LossyImageCompression", "")) == "01"
    method = "LossyImageCompressionMethod" not in header and lossy
    if not missing and not method:
        return header
    ds = copy_header(header)
    for keyword in missing:
        setattr(ds, keyword, None)
    if method:
        syntax = str(getattr(header.file_meta, "TransferSyntaxUID", ""))
        if syntax not in LOSSY_METHODS or "LossyImageCompressionRatio" not in header:
            raise DicomError(name, "marked lossy (LossyImageCompression 01) without its compression method or "
                                   f"ratio, and its transfer syntax {syntax or '?'} does not tell them")
        ds.LossyImageCompressionMethod = LOSSY_METHODS[syntax]
    return ds


def segmentation_dataset(prediction: Prediction):
    """The liver mask as a BINARY DICOM Segmentation referencing every source instance."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = prediction.model
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Liver",
        segmented_property_category=hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE),
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="ctseg UNET", family=codes.cid7162.ArtificialIntelligence, version=model.version),
    )
    findings = prediction.out_of_distribution or []
    if findings:  # SegmentDescription (ST) holds the lines; ContentDescription (LO) only 64 characters
        segment.SegmentDescription = "; ".join(f["message"] for f in findings)[:1024]
    series = prediction.series
    try:
        return _segmentation(hd, series, prediction.mask, segment, model, ood.content_description(findings)
                             if findings else None)
    except DicomError as e:
        raise CtsegError(f"{series.source}: no DICOM Segmentation can reference {e}") from e
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # highdicom's checks of the source headers
        raise CtsegError(f"{series.source}: highdicom cannot write a DICOM Segmentation referencing this series "
                         f"({type(e).__name__}: {e})") from e


def _segmentation(hd, series: Series, mask: np.ndarray, segment, model: ServedModel,
                  content_description: str | None = None):
    from ctseg import __version__

    return hd.seg.Segmentation(
        source_images=[_with_type2_study_attributes(s.header, s.name) for s in series.slices],
        pixel_array=mask,  # uint8 0/1 as it is: highdicom copies it frame by frame anyway
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ctseg",
        manufacturer_model_name="ctseg UNET",
        software_versions=__version__,
        device_serial_number=model.version,
        series_description="ctseg liver segmentation",
        omit_empty_frames=False,
        content_description=content_description,
    )
