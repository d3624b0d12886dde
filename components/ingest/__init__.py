"""Reads 3D-IRCADb-01 CT DICOM (folder or nested zip) into split Examples of one slice each."""
