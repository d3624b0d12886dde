"""Dice of a trained model on real CT that no one here wrote, through `ctseg predict`'s own code path.

No real abdominal CT with a liver mask can live in this repository (IRCAD's licence forbids it, and
we have no internet), so this bench reads it from public repositories fetched beside it:

* TotalSegmentator (github.com/wasserth/TotalSegmentator, Apache-2.0; its example CT is from the
  TotalSegmentator dataset, CC-BY-4.0), `tests/reference_files/`:
  - `example_ct_dicom/`: 20 real DICOM slices (512x512, 0.98 mm pixels, 2 mm apart, JPEG 2000
    lossless), read as they are; reference `example_seg_dicom.nii.gz`.
  - `example_ct.nii.gz`: 112 slices of 3 mm voxels from the upper abdomen to the pelvis, liver on 43;
    reference `example_seg_fast_force_split.nii.gz`.
  - `example_ct_sm.nii.gz`: 30 slices of 3 mm voxels through the liver; reference `example_seg.nii.gz`
    (TotalSegmentator's full-resolution model).
  The NIfTI volumes are written here as a DICOM CT series (axial, square field of view padded with
  air, as a scanner writes it) before `ctseg predict` reads them. The two NIfTI volumes are one scan;
  the DICOM series is another (its field of view holds the arms), of the same patient or not: the
  repository does not say.
  The references are TotalSegmentator's own output (label 5, liver), not manual contours: its liver
  Dice against manual contours is about 0.97 (Wasserthal et al. 2023), so figures here carry that error.
* dcmqi (github.com/QIICR/dcmqi, BSD-3): `data/segmentations/ct-3slice/` (3 real CT slices) and the
  liver DICOM SEG that references them (pydicom-data's `liver.dcm`, the same file as dcmqi's).

    .venv/bin/python -m bench.real_ct --model out/serving [--totalsegmentator DIR] [--dcmqi DIR] [--out DIR]

Each case goes through `load_series` → `predict_series` (the 3D clean-up included) → `write_outputs`,
and the mask is scored against the reference resampled onto the slices' own pixel grid through patient
coordinates (nearest neighbour). Prints a JSON table; the figures go in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

LIVER_LABEL = 5  # TotalSegmentator v2 class map: 1 spleen, 2 kidney_right, 3 kidney_left, 4 gallbladder, 5 liver
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def pixel_centres_lps(header) -> np.ndarray:
    """(rows, cols, 3) patient coordinates (LPS, mm) of a slice's pixel centres (DICOM PS3.3 C.7.6.2.1.1)."""
    ipp = np.asarray([float(v) for v in header.ImagePositionPatient])
    iop = np.asarray([float(v) for v in header.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    r = np.arange(int(header.Rows))[:, None, None]
    c = np.arange(int(header.Columns))[None, :, None]
    return ipp + c * col_mm * iop[:3] + r * row_mm * iop[3:]


def sample_nifti(volume: np.ndarray, affine: np.ndarray, points_lps: np.ndarray, outside=0) -> np.ndarray:
    """`volume` (a NIfTI array, its affine to RAS mm) at the given LPS points, nearest voxel."""
    ras = points_lps @ LPS_FROM_RAS.T
    ijk = (np.c_[ras.reshape(-1, 3), np.ones(ras[..., 0].size)] @ np.linalg.inv(affine).T)[:, :3]
    ijk = np.rint(ijk).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(volume.shape[:3])), axis=1)
    out = np.full(len(ijk), outside, dtype=volume.dtype)
    out[inside] = volume[tuple(ijk[inside].T)]
    return out.reshape(points_lps.shape[:-1])


def axial_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, float, float, int]:
    """An axial DICOM grid covering an axis-aligned NIfTI volume: (top-left LPS of the first slice,
    pixel mm, slice mm, square size). The field of view is made square, centred, as scanners write it."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(np.abs(affine[:3, :3]), np.diag(zooms), atol=1e-3):
        raise SystemExit("only axis-aligned NIfTI volumes are written as DICOM here")
    corners = np.array([[i, j, k, 1.0]
                        for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    lps = (corners @ affine.T)[:, :3] @ LPS_FROM_RAS.T
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    pixel_mm = float(zooms[0])
    if not np.isclose(zooms[0], zooms[1]):
        raise SystemExit(f"non-square pixels {zooms[:2]}")
    size = int(max(shape[0], shape[1]))
    centre = (lo + hi) / 2
    start = np.array([centre[0] - (size - 1) / 2 * pixel_mm, centre[1] - (size - 1) / 2 * pixel_mm, lo[2]])
    return start, pixel_mm, float(zooms[2]), size


def write_nifti_as_dicom(ct_path: Path, out: Path, name: str) -> Path:
    """A NIfTI CT written as one axial DICOM CT series (int16, HU = stored value - 1024), superior slice first."""
    import nibabel as nib
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ctseg.dicom import CT_IMAGE_STORAGE

    image = nib.load(str(ct_path))
    hu = np.asanyarray(image.dataobj).astype(np.float32)
    start, pixel_mm, slice_mm, size = axial_grid(image.affine, hu.shape)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    for k in range(hu.shape[2]):
        header = Dataset()
        header.ImagePositionPatient = [float(start[0]), float(start[1]), float(start[2] + k * slice_mm)]
        header.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        header.PixelSpacing = [pixel_mm, pixel_mm]
        header.Rows = header.Columns = size
        pixels = sample_nifti(hu, image.affine, pixel_centres_lps(header), outside=-1024.0)
        ds = Dataset()
        ds.update(header)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", name, name
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20230101", "000000", "", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, hu.shape[2] - k
        ds.Manufacturer, ds.PositionReferenceIndicator = "", ""
        ds.SliceThickness = slice_mm
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.clip(np.rint(pixels + 1024), -32768, 32767).astype("<i2").tobytes()
        pydicom.dcmwrite(out / f"image_{hu.shape[2] - 1 - k}", ds, write_like_original=False)
    return out


def reference_from_nifti(series, label_path: Path) -> np.ndarray:
    """The liver label of a NIfTI label map on each slice's pixel grid, in series order."""
    import nibabel as nib

    image = nib.load(str(label_path))
    labels = np.asanyarray(image.dataobj)
    return np.stack([sample_nifti(labels, image.affine, pixel_centres_lps(s.header)) == LIVER_LABEL
                     for s in series.slices]).astype(np.uint8)


def reference_from_seg(series, seg_path: Path) -> np.ndarray:
    """The frames of a one-segment DICOM SEG, matched to the series' slices by SOP Instance UID."""
    import pydicom

    seg = pydicom.dcmread(str(seg_path))
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    by_uid = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        by_uid[uid] = by_uid.get(uid, 0) | (frame > 0)
    missing = [s.name for s in series.slices if str(s.header.SOPInstanceUID) not in by_uid]
    if missing:
        raise SystemExit(f"{seg_path} has no frame for {missing}")
    return np.stack([by_uid[str(s.header.SOPInstanceUID)] for s in series.slices]).astype(np.uint8)


def score(predicted: np.ndarray, reference: np.ndarray, series) -> dict:
    """The evaluator's Dice and IoU (`components/evaluation/metrics.py`) over the whole series, and both volumes."""
    from ctseg.components.evaluation.metrics import dice, iou
    from ctseg.predict import volume_ml

    return {"slices": len(series.slices), "liver_slices": int(reference.any(axis=(1, 2)).sum()),
            "dice": round(dice(predicted, reference), 4), "iou": round(iou(predicted, reference), 4),
            "volume_ml": round(volume_ml(predicted, series), 1),
            "reference_volume_ml": round(volume_ml(reference, series), 1)}


def picture(rows: list[tuple[str, object, np.ndarray]], path: Path, per_case: int = 4) -> Path:
    """Slices evenly through each case's liver in the liver window: reference green, prediction red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), per_case, figsize=(3 * per_case, 3.2 * len(rows)), squeeze=False)
    for (name, prediction, reference), line in zip(rows, axes):
        with_liver = np.flatnonzero(reference.any(axis=(1, 2)) | prediction.mask.any(axis=(1, 2)))
        picks = np.unique(np.linspace(with_liver.min(), with_liver.max(), per_case).round().astype(int))
        for ax in line:
            ax.axis("off")
        for ax, k in zip(line, picks):
            ax.imshow(prediction.windowed[k], cmap="gray")
            ax.contour(reference[k], [0.5], colors="lime", linewidths=0.8)
            ax.contour(prediction.mask[k], [0.5], colors="red", linewidths=0.8)
            ax.set_title(f"slice {k + 1} of {len(reference)}", fontsize=8)
        line[0].text(0.01, 0.99, name.split(" (")[0], transform=line[0].transAxes, fontsize=7, va="top", color="w")
    fig.suptitle("real CT: reference green, model red", fontsize=10)
    fig.tight_layout(h_pad=0.3, w_pad=0.3)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def cases(totalsegmentator: Path | None, dcmqi: Path | None, scratch: Path):
    """(name, series source, function series → reference mask) for every source given."""
    if totalsegmentator:
        ref = totalsegmentator / "tests" / "reference_files"
        yield ("TotalSegmentator example_ct_dicom (20 real DICOM slices, 512x512)", ref / "example_ct_dicom",
               lambda s: reference_from_nifti(s, ref / "example_seg_dicom.nii.gz"))
        for ct, seg, what in (("example_ct", "example_seg_fast_force_split", "112 slices, 3 mm, abdomen to pelvis"),
                              ("example_ct_sm", "example_seg", "30 slices, 3 mm, through the liver")):
            series_dir = write_nifti_as_dicom(ref / f"{ct}.nii.gz", scratch / ct, ct)
            yield (f"TotalSegmentator {ct}.nii.gz ({what})", series_dir,
                   lambda s, seg=seg: reference_from_nifti(s, ref / f"{seg}.nii.gz"))
    if dcmqi:
        from pydicom.data import get_testdata_file

        yield ("dcmqi ct-3slice + liver.dcm (3 real slices)", dcmqi / "data" / "segmentations" / "ct-3slice",
               lambda s: reference_from_seg(s, Path(get_testdata_file("liver.dcm"))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a serving dir, a version dir or a Trainer model")
    ap.add_argument("--totalsegmentator", type=Path, help="a checkout of github.com/wasserth/TotalSegmentator")
    ap.add_argument("--dcmqi", type=Path, help="a checkout of github.com/QIICR/dcmqi")
    ap.add_argument("--out", type=Path, help="keep each case's predict outputs (SEG, masks, overlay) here")
    ap.add_argument("--picture", type=Path, help="write a PNG of every case: reference and prediction contours")
    args = ap.parse_args(argv)
    if not (args.totalsegmentator or args.dcmqi):
        ap.error("give --totalsegmentator and/or --dcmqi")

    from ctseg.predict import load_model, load_series, predict_series, write_outputs

    served = load_model(args.model)
    rows, drawn = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, src, reference) in enumerate(cases(args.totalsegmentator, args.dcmqi, Path(tmp))):
            series = load_series(src)
            prediction = predict_series(series, served)
            if args.out:
                write_outputs(prediction, args.out / f"case{i}")
            truth = reference(series)
            rows.append({"case": name, **score(prediction.mask, truth, series)})
            drawn.append((name, prediction, truth))
            print(json.dumps(rows[-1]), flush=True)
    if args.picture:
        print(f"picture: {picture(drawn, args.picture)}")
    dices = [r["dice"] for r in rows]
    print(json.dumps({"model": str(served.path), "context_slices": served.context_slices,
                      "mean_dice": round(float(np.mean(dices)), 4), "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
