"""The intensity-only bound: the best Dice any single HU band [lo, hi] reaches on the liver.

A segmenter that beats this bound uses shape and context; a phantom on which the bound is high can be
solved by thresholding and teaches a model nothing that transfers. On real contrast-enhanced CT the
bound is about 0.65-0.70. The band is an oracle: chosen per patient, knowing the mask.

    python -m bench.intensity_bound [--patients 14 --slices 40 --size 512 --seed 0]
                                    [--real-ct DIR]   # source CT slices of pydicom-data's liver.dcm

liver.dcm (a DICOM SEG by QIICR) references three CT slices of series ...23430.1 that pydicom-data does
not ship; they are the three files of data/segmentations/ct-3slice/ in github.com/QIICR/dcmqi
(git clone --depth 1 https://github.com/QIICR/dcmqi; --real-ct dcmqi/data/segmentations/ct-3slice).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HU_RANGE = (-1024, 1500)


def best_band_dice(hu: np.ndarray, mask: np.ndarray) -> tuple[float, int, int]:
    """(Dice, lo, hi) of the best band lo <= HU <= hi over all integer bands in HU_RANGE."""
    lo0, hi0 = HU_RANGE
    bins = np.clip(np.rint(hu).astype(np.int64), lo0, hi0) - lo0
    every = np.concatenate([[0], np.cumsum(np.bincount(bins.ravel(), minlength=hi0 - lo0 + 1))])
    inside = np.concatenate([[0], np.cumsum(np.bincount(bins[mask.astype(bool)], minlength=hi0 - lo0 + 1))])
    total = int(mask.sum())
    best = (0.0, 0, 0)
    # a coarse 4 HU grid first, then every band within 8 HU of its winner: exact and fast
    for step, los, his in ((4, None, None), (1, None, None)):
        if los is None and step == 4:
            starts, ends = np.arange(0, len(every) - 1, 4), np.arange(1, len(every), 4)
        else:
            starts = np.arange(max(0, best[1] - lo0 - 8), min(len(every) - 1, best[1] - lo0 + 9))
            ends = np.arange(max(1, best[2] - lo0 - 7), min(len(every), best[2] - lo0 + 10))
        predicted = every[ends][None, :] - every[starts][:, None]
        hit = inside[ends][None, :] - inside[starts][:, None]
        dice = np.where(predicted > 0, 2.0 * hit / np.maximum(predicted + total, 1), 0.0)
        i, j = np.unravel_index(int(np.argmax(dice)), dice.shape)
        if dice[i, j] >= best[0]:
            best = (float(dice[i, j]), int(starts[i] + lo0), int(ends[j] - 1 + lo0))
    return best


def phantom_bounds(patients: int, slices: int, size: int, seed: int) -> list[dict]:
    from ctseg.phantom import PatientPhantom, patient_geometries

    out = []
    for g in patient_geometries(patients, slices, seed):
        phantom = PatientPhantom(g, size)
        rendered = [phantom.slice(i) for i in range(g.num_slices)]
        hu = np.rint(np.stack([s.hu for s in rendered]))
        liver = np.stack([s.masks["liver"] for s in rendered])
        dice, lo, hi = best_band_dice(hu, liver)
        out.append({"patient": g.patient_id, "phase": g.phase, "noise_hu": g.noise_hu, "dice": dice, "band": (lo, hi),
                    "dice_liver_slices": best_band_dice(hu[liver.any((1, 2))], liver[liver.any((1, 2))])[0]})
    return out


def real_ct_bound(ct_dir: Path) -> dict:
    """The bound on pydicom-data's liver.dcm and its source CT slices (matched by SOP Instance UID)."""
    import pydicom
    from pydicom.data import get_testdata_file

    seg = pydicom.dcmread(get_testdata_file("liver.dcm"))
    wanted = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for f in seg.PerFrameFunctionalGroupsSequence]
    found = {}
    for path in sorted(ct_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        found[ds.SOPInstanceUID] = ds
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        raise SystemExit(f"{ct_dir} lacks the source CT slices {missing} of liver.dcm")
    hu = np.stack([found[u].pixel_array * float(found[u].RescaleSlope) + float(found[u].RescaleIntercept)
                   for u in wanted])
    dice, lo, hi = best_band_dice(hu, seg.pixel_array.astype(bool))
    return {"dice": dice, "band": (lo, hi), "slices": len(wanted)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=14)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-ct", type=Path, help="folder holding the source CT slices of liver.dcm")
    args = parser.parse_args(argv)
    started = time.time()
    rows = phantom_bounds(args.patients, args.slices, args.size, args.seed)
    for r in rows:
        print(f"{r['patient']:<13} {r['phase']:<8} noise {r['noise_hu']:4.1f} HU  "
              f"best band {r['band'][0]:>5}..{r['band'][1]:<5} "
              f"Dice {r['dice']:.3f} (liver slices only {r['dice_liver_slices']:.3f})")
    dice = np.array([r["dice"] for r in rows])
    only = np.array([r["dice_liver_slices"] for r in rows])
    print(f"phantom ({args.patients} patients, {args.slices} slices, {args.size} px, seed {args.seed}): "
          f"intensity-only bound mean {dice.mean():.3f} (range {dice.min():.3f}-{dice.max():.3f}); "
          f"liver-bearing slices only {only.mean():.3f} ({only.min():.3f}-{only.max():.3f}) "
          f"[{time.time() - started:.0f} s]")
    if args.real_ct:
        real = real_ct_bound(args.real_ct)
        print(f"real CT (liver.dcm + its {real['slices']} source slices, all liver-bearing): bound {real['dice']:.3f}, "
              f"band {real['band'][0]}..{real['band'][1]} HU")


if __name__ == "__main__":
    main()
