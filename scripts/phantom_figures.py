"""docs/img/phantom_vs_real.png and the real-vs-phantom figures of docs/PHANTOM.md.

    .venv/bin/python scripts/phantom_figures.py

The real slice is pydicom-data's explicit_VR-UN.dcm: NIH Pancreas-CT patient 1, a portal-venous
abdominal CT at 0.86 mm pixels. Its rows run posterior to anterior (ImageOrientationPatient
[1,0,0,0,-1,0]), so it is flipped to the radiological view the phantom uses.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ctseg.phantom import PatientPhantom, patient_geometries  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
LIVER_WINDOW = (-160, 240)            # level 40, width 400
REAL_ROIS = {"liver": (265, 150, 10), "spleen": (300, 372, 6), "muscle": (362, 300, 5)}   # row, col, half size


def real_slice() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("explicit_VR-UN.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu[::-1] if float(ds.ImageOrientationPatient[4]) < 0 else hu


def roi_stats(hu: np.ndarray, r: int, c: int, h: int) -> tuple[float, float, float]:
    """Median, SD and the lag-1 (neighbouring pixel) correlation of the noise in a square ROI."""
    roi = hu[r - h:r + h + 1, c - h:c + h + 1]
    res = roi - roi.mean()
    return float(np.median(roi)), float(roi.std()), float(np.corrcoef(res[:, 1:].ravel(), res[:, :-1].ravel())[0, 1])


def phantom_slice():
    """The default `make run` phantom's first portal-venous patient with real-like noise, at spleen level."""
    g = next(g for g in patient_geometries(14, 40, 0) if g.phase == "portal" and 11 <= g.noise_hu <= 18)
    phantom = PatientPhantom(g, 512)
    a = phantom.anatomy
    index = int(round((a.lo + 0.55 * (a.hi - a.lo)) * (g.num_slices - 1)))
    return g, phantom.slice(index)


def interior_roi(mask: np.ndarray, h: int) -> tuple[int, int, int]:
    """The centre of the largest square of side 2h+1 inside the mask (searched on a coarse grid)."""
    rows, cols = np.nonzero(mask)
    for r, c in zip(rows[:: max(1, len(rows) // 2000)], cols[:: max(1, len(cols) // 2000)]):
        if mask[r - h:r + h + 1, c - h:c + h + 1].all():
            return int(r), int(c), h
    raise ValueError("no interior ROI")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    real = real_slice()
    g, s = phantom_slice()
    from ctseg.phantom.tissues import LABEL
    phantom_rois = {name: interior_roi(s.labels == LABEL[name], h)
                    for name, h in (("liver", 10), ("spleen", 6), ("muscle", 5))}
    print(f"phantom: {g.patient_id}, {g.phase}, noise {g.noise_hu} HU")
    print("| tissue | real median HU | real SD | real lag-1 r | phantom median HU | phantom SD | phantom lag-1 r |")
    print("|---|---|---|---|---|---|---|")
    for name in REAL_ROIS:
        rm, rs, rl = roi_stats(real, *REAL_ROIS[name])
        pm, ps, pl = roi_stats(s.hu, *phantom_rois[name])
        print(f"| {name} | {rm:.0f} | {rs:.1f} | {rl:.2f} | {pm:.0f} | {ps:.1f} | {pl:.2f} |")
    fat = real[(real > -200) & (real < -30)]
    print(f"| fat (all pixels -200..-30) | {np.median(fat):.0f} | | | "
          f"{np.median(s.hu[s.labels == LABEL['fat']]):.0f} | | |")

    fig, axes = plt.subplots(2, 2, figsize=(12, 12), gridspec_kw={"height_ratios": [3, 1.2]})
    for ax, img, title in ((axes[0, 0], s.hu, f"phantom {g.patient_id} ({g.phase} venous, noise {g.noise_hu:.0f} HU)"),
                           (axes[0, 1], real, "real: NIH Pancreas-CT 0001 (pydicom-data explicit_VR-UN.dcm)")):
        ax.imshow(np.clip(img, *LIVER_WINDOW), cmap="gray", vmin=LIVER_WINDOW[0], vmax=LIVER_WINDOW[1])
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    axes[0, 0].contour(s.masks["liver"], [0.5], colors="r", linewidths=0.6)
    for ax, img, (r, c, _), label in ((axes[1, 0], s.hu, phantom_rois["liver"], "phantom liver, 64 px crop"),
                                      (axes[1, 1], real, REAL_ROIS["liver"], "real liver, 64 px crop")):
        ax.imshow(np.clip(img[r - 32:r + 32, c - 32:c + 32], *LIVER_WINDOW), cmap="gray",
                  vmin=LIVER_WINDOW[0], vmax=LIVER_WINDOW[1])
        ax.set_title(label + " (noise texture)", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "phantom_vs_real.png", dpi=80)

    fig, axes = plt.subplots(3, 5, figsize=(20, 12))
    shown = {}
    for geom in patient_geometries(14, 40, 0):
        shown.setdefault(geom.phase, geom)
    for row, (phase, geom) in zip(axes, sorted(shown.items())):
        phantom = PatientPhantom(geom, 512)
        for ax, f in zip(row, (0.15, 0.35, 0.55, 0.75, 0.92)):
            sl = phantom.slice(int(f * (geom.num_slices - 1)))
            ax.imshow(np.clip(sl.hu, *LIVER_WINDOW), cmap="gray")
            ax.contour(sl.masks["liver"], [0.5], colors="r", linewidths=0.5)
            ax.set_title(f"{geom.patient_id} {phase}, noise {geom.noise_hu:.0f} HU, height {f:.2f}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "phantom_patients.png", dpi=55)


if __name__ == "__main__":
    main()
