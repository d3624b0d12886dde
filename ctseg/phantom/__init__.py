"""A synthetic abdominal CT phantom written in the exact 3D-IRCADb-01 layout.

The real IRCAD data may not be redistributed, so this is the embedded default that every demo and
test runs on. It is built to be as hard as real contrast-enhanced abdominal CT for a segmenter:
anatomy (anatomy.py), Hounsfield units per tissue and contrast phase from published values
(tissues.py), scanner blur, partial volume, correlated noise and streaks (physics.py), written as
DICOM (dicom_io.py). docs/PHANTOM.md shows it beside real CT and lists the sources.
"""
from ctseg.phantom.dicom_io import HU_INTERCEPT, render_patient, write_phantom
from ctseg.phantom.render import PROTOCOLS, PatientGeometry, PatientPhantom, Slice, patient_geometries

# Written for every patient (lesions add livertumor01.. folders where a patient has them).
ORGAN_MASKS = ("liver", "spleen", "gallbladder", "rightkidney", "leftkidney")

__all__ = ["HU_INTERCEPT", "ORGAN_MASKS", "PROTOCOLS", "PatientGeometry", "PatientPhantom", "Slice",
           "patient_geometries", "render_patient", "write_phantom"]
