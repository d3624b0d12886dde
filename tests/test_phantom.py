import hashlib
import io
import zipfile

import numpy as np
import pydicom
import pytest

from ctseg.cli import main
from ctseg.dicom import hu_from_dataset, mask_from_dataset, read_dataset
from ctseg.phantom import ORGAN_MASKS, PatientPhantom, patient_geometries, write_phantom
from ctseg.phantom.dicom_io import SLICES_PER_JOB
from ctseg.phantom.render import MIXED
from ctseg.phantom.tissues import BONE, LABEL, PHASES, TABLE


def _series(patient_dir, rel):
    files = sorted((patient_dir / rel).iterdir(), key=lambda p: int(p.name.split("_")[1]))
    return [pydicom.dcmread(f) for f in files]


def test_layout_matches_ircad(small_phantom):
    patients = sorted(p.name for p in small_phantom.iterdir())
    assert patients == ["3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.3"]
    for p in small_phantom.iterdir():
        images = sorted(f.name for f in (p / "PATIENT_DICOM").iterdir())
        assert all(f.startswith("image_") and "." not in f for f in images)
        n = len(images)
        assert {f"image_{i}" for i in range(n)} == set(images)
        organs = sorted(d.name for d in (p / "MASKS_DICOM").iterdir())
        assert set(ORGAN_MASKS) <= set(organs)
        assert all(o in ORGAN_MASKS or o.startswith("livertumor") and len(o) == len("livertumor01") for o in organs)
        for organ in organs:
            assert len(list((p / "MASKS_DICOM" / organ).iterdir())) == n


def test_dicom_is_valid_ct_stored_as_ircad_stores_it(small_phantom):
    """Feet first (image_0 the most inferior), ImagePositionPatient (0, 0, thickness x i), no
    FrameOfReferenceUID, and CT unsigned with intercept -1024 or signed with intercept 0, per patient."""
    storages = set()
    for p in sorted(small_phantom.iterdir()):
        images = _series(p, "PATIENT_DICOM")
        ds = images[0]
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
        signed = ds.PixelRepresentation == 1
        storages.add(signed)
        assert float(ds.RescaleIntercept) == (0 if signed else -1024) and float(ds.RescaleSlope) == 1
        assert 0.56 <= float(ds.PixelSpacing[0]) <= 0.87 and 1.6 <= float(ds.SliceThickness) <= 4.0
        assert (ds.Rows, ds.Columns) == (64, 64)
        assert "FrameOfReferenceUID" not in ds
        assert len({d.SeriesInstanceUID for d in images}) == 1
        assert len({d.SOPInstanceUID for d in images}) == len(images)
        assert [int(d.InstanceNumber) for d in images] == list(range(1, len(images) + 1))
        positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in images])
        assert np.allclose(positions, [[0, 0, i * float(ds.SliceThickness)] for i in range(len(images))])
        hu = np.stack([hu_from_dataset(d) for d in images])
        assert hu.min() < -900 and hu.max() > 300          # air outside the body, bone inside, whatever the storage
        masks = _series(p, "MASKS_DICOM/liver")
        assert set(np.unique(np.concatenate([m.pixel_array.ravel() for m in masks]))) <= {0, 255}
    assert storages == {True, False}


def test_geometry_varies_by_patient():
    gs = patient_geometries(6, 60, seed=3)
    assert len({g.spacing_mm for g in gs}) == 6 and len({g.thickness_mm for g in gs}) > 1
    assert len({g.num_slices for g in gs}) > 1
    # 60 slices +-20% over an abdominal scan's height; longer protocols proportionally more
    assert all(48 <= g.num_slices / (g.scan_range[1] - g.scan_range[0]) <= 72.5 for g in gs)
    assert all(8 <= g.noise_hu <= 25 for g in gs) and len({g.noise_hu for g in gs}) == 6
    assert {g.phase for g in patient_geometries(20, 60, seed=3)} == set(PHASES)


def _interior(labels: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels whose whole (2 margin + 1)^2 neighbourhood has their label: no partial volume."""
    same = np.ones(labels.shape, bool)
    for dr in range(-margin, margin + 1):
        for dc in range(-margin, margin + 1):
            same &= labels == np.roll(labels, (dr, dc), axis=(0, 1))
    return same & (labels != MIXED)


@pytest.fixture(scope="module")
def one_patient_per_phase():
    """The first patient of each contrast phase among seed 7's abdominal scans with the arms up (the
    largest organs in the field of view, so every tissue has enough interior pixels), at 128 px."""
    found = {}
    for g in patient_geometries(24, 16, seed=7, protocols=("abdomen",)):
        if not g.arms_down:
            found.setdefault(g.phase, g)
    assert set(found) == set(PHASES)
    return {phase: (g, [PatientPhantom(g, 128).slice(i) for i in range(g.num_slices)])
            for phase, g in found.items()}


@pytest.mark.parametrize("phase", PHASES)
def test_tissue_medians_and_spreads_fall_in_the_published_ranges(one_patient_per_phase, phase):
    g, slices = one_patient_per_phase[phase]
    checked = []
    for label, tissue in enumerate(TABLE):
        values = np.concatenate([s.hu[_interior(s.labels) & (s.labels == label)] for s in slices])
        if len(values) < 200:
            continue
        lo, hi = tissue.range(phase)
        median = float(np.median(values))
        # the smooth texture field can shift a small organ's mean by about one texture SD
        assert lo - tissue.texture_hu - 3 <= median <= hi + tissue.texture_hu + 3, (tissue.name, median, (lo, hi))
        q25, q75 = np.percentile(values, [25, 75])
        spread = (q75 - q25) / 1.349
        expected = np.hypot(g.noise_hu, tissue.texture_hu)
        assert 0.7 * g.noise_hu <= spread <= 1.3 * expected + 3, (tissue.name, spread, g.noise_hu, tissue.texture_hu)
        checked.append(tissue.name)
    assert {"air", "muscle", "liver"} <= set(checked) and len(checked) >= 8, checked


def test_noise_is_spatially_correlated(one_patient_per_phase):
    """CT noise has a ramp-shaped power spectrum: neighbouring pixels correlate, unlike white noise."""
    g, slices = one_patient_per_phase["portal"]
    residuals = []
    for s in slices:
        air = _interior(s.labels, 3) & (s.labels == LABEL["air"])
        residuals.append(np.where(air, s.hu - np.median(s.hu[air]), np.nan))
    r = np.stack(residuals)
    pairs = ~np.isnan(r[:, :, 1:]) & ~np.isnan(r[:, :, :-1])
    lag1 = np.corrcoef(r[:, :, 1:][pairs], r[:, :, :-1][pairs])[0, 1]
    assert np.nanstd(r) == pytest.approx(g.noise_hu, rel=0.15)
    white = np.random.default_rng(0).standard_normal((64, 128))
    assert abs(np.corrcoef(white[:, 1:].ravel(), white[:, :-1].ravel())[0, 1]) < 0.05
    assert lag1 > 0.3, lag1
    spectrum = np.abs(np.fft.rfft(np.nan_to_num(r[:, :, 4:60]), axis=2)) ** 2
    power = spectrum.mean(axis=(0, 1))
    assert power[-1] < 0.3 * power.max()   # white noise would be flat up to the Nyquist frequency


def test_no_hu_band_segments_the_liver():
    """The intensity-only bound (bench/intensity_bound.py) on three patients stays near real CT's 0.65-0.70."""
    from bench.intensity_bound import best_band_dice

    dice = []
    for g in patient_geometries(3, 16, seed=2):
        phantom = PatientPhantom(g, 128)
        slices = [phantom.slice(i) for i in range(g.num_slices)]
        dice.append(best_band_dice(np.stack([s.hu for s in slices]), np.stack([s.masks["liver"] for s in slices]))[0])
    assert np.mean(dice) < 0.8, dice


def test_liver_mask_holds_its_lesions_and_neighbours_touch_it(tmp_path):
    root = write_phantom(tmp_path / "p", patients=3, slices=24, size=96, seed=2)
    lesions_seen = touching = 0
    for p in root.iterdir():
        n = len(list((p / "PATIENT_DICOM").iterdir()))
        tumours = sorted(d.name for d in (p / "MASKS_DICOM").iterdir() if d.name.startswith("livertumor"))
        for i in range(n):
            liver = mask_from_dataset(read_dataset(p / f"MASKS_DICOM/liver/image_{i}")).astype(bool)
            for t in tumours:
                lesion = mask_from_dataset(read_dataset(p / f"MASKS_DICOM/{t}/image_{i}")).astype(bool)
                assert not (lesion & ~liver).any(), (p.name, t, i)    # IRCAD's liver mask includes its tumours
                lesions_seen += int(lesion.any())
            if liver.any():
                hu = hu_from_dataset(read_dataset(p / f"PATIENT_DICOM/image_{i}"))
                ring = np.roll(liver, 2, 0) | np.roll(liver, -2, 0) | np.roll(liver, 2, 1) | np.roll(liver, -2, 1)
                edge = ring & ~liver
                # soft tissue (not fat or air) all round much of the liver: organs, wall, vessels
                touching += int(np.mean(hu[edge] > -20) > 0.3)
                cols = np.nonzero(liver)[1]
                assert cols.mean() < hu.shape[1] * 0.6          # patient's right: image left
    assert lesions_seen > 0 and touching > 0


def _pixel_digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("image_*")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(pydicom.dcmread(f).PixelData)
    return h.hexdigest()


def test_same_seed_same_pixels(tmp_path):
    a = write_phantom(tmp_path / "a", patients=2, slices=8, size=32, seed=9)
    b = write_phantom(tmp_path / "b", patients=2, slices=8, size=32, seed=9)
    c = write_phantom(tmp_path / "c", patients=2, slices=8, size=32, seed=10)
    assert _pixel_digest(a) == _pixel_digest(b) != _pixel_digest(c)


def test_zip_form_is_the_published_layout(small_phantom_zip, small_phantom):
    with zipfile.ZipFile(small_phantom_zip) as outer:
        names = sorted(outer.namelist())
        assert names == sorted(f"3Dircadb1/3Dircadb1.{k}/{part}.zip"
                               for k in (1, 2, 3) for part in ("PATIENT_DICOM", "MASKS_DICOM"))
        with zipfile.ZipFile(io.BytesIO(outer.read("3Dircadb1/3Dircadb1.1/PATIENT_DICOM.zip"))) as inner:
            first = inner.read("PATIENT_DICOM/image_0")
            n = len(inner.namelist())
        with zipfile.ZipFile(io.BytesIO(outer.read("3Dircadb1/3Dircadb1.1/MASKS_DICOM.zip"))) as inner:
            assert "MASKS_DICOM/liver/image_0" in inner.namelist()
            assert len([x for x in inner.namelist() if x.startswith("MASKS_DICOM/liver/")]) == n
    # same seed: the zip holds the same DICOM as the folder form
    assert first == (small_phantom / "3Dircadb1.1/PATIENT_DICOM/image_0").read_bytes()


def test_cli_writes_phantom(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "x"), "--patients", "2", "--slices", "6", "--size", "32"]) == 0
    assert "wrote 2 phantom patients" in capsys.readouterr().out
    assert (tmp_path / "x/3Dircadb1.2/MASKS_DICOM/liver/image_0").exists()


def test_phases_and_noise_can_be_narrowed(tmp_path):
    assert main(["phantom", str(tmp_path / "x"), "--patients", "2", "--slices", "4", "--size", "32",
                 "--phases", "portal", "--noise-hu", "8", "9"]) == 0
    for p in (tmp_path / "x").iterdir():
        ds = pydicom.dcmread(p / "PATIENT_DICOM/image_0")
        assert ds.ImageComments == "contrast phase: portal" and ds.ContrastBolusAgent
    gs = patient_geometries(10, 8, seed=0, phases=("native",), noise_hu=(20, 21))
    assert {g.phase for g in gs} == {"native"} and all(20 <= g.noise_hu <= 21 for g in gs)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "x"), "--patients", "0"]) == 1
    assert "at least 1 patient" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "x"), "--noise-hu", "9", "8"]) == 1
    assert "noise_hu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["phantom", "--help"])


def _render(g, size=64):
    phantom = PatientPhantom(g, size)
    return phantom, [phantom.slice(i) for i in range(g.num_slices)]


@pytest.mark.parametrize("protocol, liver_share", [("abdomen", (0.5, 0.8)), ("abdomen_pelvis", (0.25, 0.5)),
                                                   ("chest_abdomen", (0.25, 0.5))])
def test_scan_protocols_cover_what_real_liver_ct_covers(protocol, liver_share):
    """Abdominal scans hold the liver on most slices, abdomen-pelvis and chest-abdomen scans on under half;
    the chest-abdomen scan's top slices are chest (lung, heart, no liver), the pelvis scan's bottom has
    the hip bones and no lung."""
    shares = []
    for g in patient_geometries(4, 16, seed=5, protocols=(protocol,)):
        assert g.protocol == protocol
        phantom, slices = _render(g)
        with_liver = [s.masks["liver"].any() for s in slices]
        shares.append(np.mean(with_liver))
        lung = [np.mean(s.labels == LABEL["lung"]) for s in slices]
        top, bottom = slices[-1].labels, slices[0].labels
        if protocol == "chest_abdomen":
            assert not with_liver[-1] and lung[-1] > 0.05 and not with_liver[0]
            heart = [phantom.anatomy.heart_mask(phantom._t(i)).any() for i in range(g.num_slices)]
            assert np.mean(heart) > 0.2
        if protocol == "abdomen_pelvis":
            assert lung[0] == 0 and not with_liver[0]
            assert np.mean(np.isin(bottom, BONE)) > 0.01
        assert top.any() and bottom.any()
    assert liver_share[0] <= np.mean(shares) <= liver_share[1], shares


def test_heart_rests_on_the_liver_dome_across_the_diaphragm():
    """On the liver's top slices the heart lies beside the dome, a few millimetres away, with the
    diaphragm (muscle) between them, as on real CT: the confusion the model has to learn to avoid."""
    from scipy import ndimage

    touching = 0
    for g in patient_geometries(4, 16, seed=5, protocols=("chest_abdomen",)):
        phantom = PatientPhantom(g, 128)
        a = phantom.anatomy
        for i in range(g.num_slices):
            t = phantom._t(i)
            labels, masks = a.render(t)
            heart = a.heart_mask(t) & (labels != LABEL["fat"])
            liver = masks["liver"]
            if not (heart.any() and liver.any()):
                continue
            near = ndimage.binary_dilation(liver, iterations=4)
            between = near & ~liver & ndimage.binary_dilation(heart, iterations=4)
            if (near & heart).any() and (labels[between] == LABEL["muscle"]).any():
                touching += 1
                assert not (heart & liver).any() or (labels[heart & liver] == LABEL["liver"]).all()
    assert touching >= 4, touching


def _anterior_notch(liver: np.ndarray) -> int:
    """Rows by which the liver's anterior outline dips between higher points on either side of it."""
    cols = np.flatnonzero(liver.any(axis=0))
    front = -np.argmax(liver[:, cols], axis=0).astype(float)     # higher is more anterior
    rim = np.minimum(np.maximum.accumulate(front), np.maximum.accumulate(front[::-1])[::-1])
    return int(np.max(rim - front))


def test_medial_segment_joins_the_lobes_under_the_anterior_wall():
    """Above the hilum the liver's anterior surface runs unbroken from the right lobe across the midline
    (segment IV joins the lobes), as on real CT; two separate ellipses left a notch of up to a tenth of the
    body's height there, which taught the model to stop short of a real liver's left lobe."""
    from ctseg.phantom.anatomy import Anatomy

    notches = []
    for g in patient_geometries(16, 40, seed=3):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        body_rows = a.body[3] * 128
        for s in (0.6, 0.7, 0.8):
            _, masks = a.render(a.lo + s * (a.hi - a.lo))
            notches.append(_anterior_notch(masks["liver"]) / body_rows)
    assert max(notches) <= 0.06, sorted(notches)[-5:]


def test_hepatic_flexure_lies_against_the_liver_tip():
    """The colon turns under the right lobe's tip (the hepatic flexure): on the liver's lowest slices the colon
    touches the liver, as on real CT where a fluid- or faeces-filled colon lies where a liver's tip could be."""
    from scipy import ndimage

    from ctseg.phantom.anatomy import Anatomy

    touching = []
    for g in patient_geometries(12, 40, seed=3):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        heights = a.lo + np.linspace(0.02, 0.25, 8) * (a.hi - a.lo)
        near = [(ndimage.binary_dilation(a.render(t)[1]["liver"], iterations=2) & a.colon_mask(t)).any()
                for t in heights]
        touching.append(any(near))
    assert np.mean(touching) >= 0.9, touching


def test_the_liver_tip_runs_down_the_lateral_wall():
    """The right lobe's inferior tip (segment VI) lies against the lateral abdominal wall with the colon medial
    to it, as on real CT; a tip shrunk towards the middle of the lobe left the lateral wall to the colon."""
    from ctseg.phantom.anatomy import Anatomy

    gaps = []
    for g in patient_geometries(12, 40, seed=5):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        labels, masks = a.render(a.lo + 0.12 * (a.hi - a.lo))
        cols = np.flatnonzero(masks["liver"].any(axis=0))
        inside = np.flatnonzero((labels == LABEL["visceral_fat"]).any(axis=0))  # the cavity; liver may cover its edge
        gaps.append((cols.min() - inside.min()) / (a.body[2] * 64) if len(cols) else 1.0)
    assert np.median(gaps) <= 0.08 and max(gaps) <= 0.2, np.round(gaps, 3)


def test_the_lateral_wall_is_as_thick_as_on_real_ct():
    """Lateral to the right lobe lie the diaphragm, the ribs with their intercostals and the flank muscles: on
    TotalSegmentator's two example scans about 15 mm of them (medians 15.0 and 15.7 mm, quartiles 9-21 mm) before
    the first fat, on rows through the middle of the liver. The phantom's wall was 5-9 mm of muscle, often with
    visceral fat between it and the liver (median 7.5 mm, a quarter under 3.3 mm), so a model trained on it took
    the real, isodense wall on an unenhanced scan for liver (docs/BENCHMARKS.md, "Flanks as thick as the real ones")."""
    from ctseg.phantom.anatomy import Anatomy

    bands_mm = []
    for g in patient_geometries(6, 40, seed=5):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 256)
        mm_per_pixel = 2 * g.spacing_mm        # 256 px across the 512 px field of view
        for s in (0.4, 0.5, 0.6):
            labels, masks = a.render(a.lo + s * (a.hi - a.lo))
            liver = masks["liver"]
            rows = np.flatnonzero(liver.any(axis=1))
            quarter = (rows.max() - rows.min()) // 4
            for y in range(rows.min() + quarter, rows.max() - quarter + 1):
                lateral = labels[y, :np.flatnonzero(liver[y]).min()][::-1]    # outwards from the liver's edge
                fat = np.flatnonzero(np.isin(lateral, [LABEL["fat"], LABEL["visceral_fat"]]))
                if len(fat):
                    bands_mm.append(fat[0] * mm_per_pixel)
    assert len(bands_mm) > 300
    assert 11 <= np.median(bands_mm) <= 20 and np.percentile(bands_mm, 25) >= 7, np.percentile(bands_mm, [25, 50, 75])


def test_ascending_colon_fills_the_right_flank_up_to_the_flexure():
    """The ascending colon is fixed in the right paracolic gutter: on every height from the caecum to just below
    the liver it lies against the flank muscles, as on real CT, where it takes the place under the liver's tip
    that the tip holds above. (A section drawn only near a segment's ends left it out of most heights.)"""
    from ctseg.phantom.anatomy import T_BOTTOM, Anatomy

    gaps = []
    for g in patient_geometries(12, 40, seed=6):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        for t in np.linspace(T_BOTTOM + 0.35, a.lo - 0.04, 6):
            labels, _ = a.render(t)
            colon = a.colon_mask(t)[:, :64]
            cols = np.flatnonzero(colon.any(axis=0))
            inside = np.flatnonzero((labels == LABEL["visceral_fat"]).any(axis=0))   # the cavity
            assert len(cols), f"no colon in the right flank at height {t:.2f} (patient {g.patient_id})"
            gaps.append((cols.min() - inside.min()) / (a.body[2] * 64))
    assert np.median(gaps) <= 0.04 and max(gaps) <= 0.1, np.round(gaps, 3)


def test_faeces_are_mottled_with_gas():
    """Faeces in the colon hold bubbles of gas (a few per cent to a fifth of the content here); a liver never does."""
    from ctseg.phantom.anatomy import Anatomy

    fractions = []
    for g in patient_geometries(12, 40, seed=4):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        for t in np.linspace(a.lo - 0.3, a.lo + 0.2, 6):
            labels, _ = a.render(t)
            colon = a.colon_mask(t)
            faeces, gas = (colon & (labels == LABEL["bowel_content"])).sum(), (colon & (labels == LABEL["gas"])).sum()
            if faeces > 50:
                fractions.append(gas / (gas + faeces))
    assert len(fractions) >= 10 and 0.02 < np.median(fractions) < 0.4, fractions


def _liver_slices(seed: int, patients: int = 12):
    """(labels, organ masks) of each patient's anatomy at 19 heights through its liver, at 128 px."""
    from ctseg.phantom.anatomy import Anatomy

    for g in patient_geometries(patients, 40, seed=seed):
        a = Anatomy(np.random.default_rng(g.seed + (1,)), 128)
        for s in np.linspace(0.05, 0.95, 19):
            yield a.render(a.lo + s * (a.hi - a.lo))


def test_the_kidneys_indent_the_liver_instead_of_lying_under_it():
    """Organs do not overlap: the right kidney leaves its impression on the liver's visceral surface. A liver
    painted over its neighbours (1,966 kidney pixels under the liver on these slices before) is a convex outline
    cut through them, and teaches a model to fill a real liver's concavities with kidney, colon and fat."""
    under = [int((masks[k] & masks["liver"]).sum()) for _, masks in _liver_slices(3)
             for k in ("rightkidney", "leftkidney") if k in masks]
    assert len(under) > 20 and sum(under) == 0, sum(under)


def test_muscle_keeps_the_liver_off_the_bone():
    """On real CT the diaphragm and intercostal muscles lie between the ribs and the liver, and the crura in
    front of the vertebrae: no liver pixel touches bone (736 pixels did on these slices before)."""
    touching = 0
    for labels, masks in _liver_slices(3):
        liver = masks["liver"]
        ring = np.roll(liver, 1, 0) | np.roll(liver, -1, 0) | np.roll(liver, 1, 1) | np.roll(liver, -1, 1)
        touching += int((ring & ~liver & np.isin(labels, BONE)).sum())
    assert touching == 0, touching


def test_the_lung_recess_lies_behind_the_upper_liver():
    """The lung base is a dome: below its top, the posterior costophrenic recess holds a crescent of lung between
    the chest wall and the liver's posterior surface, with the diaphragm (muscle) between lung and liver, and
    the crescent thins the lower it reaches. On real CT this is what darkens the upper liver's posterior rim
    (partial volume through the oblique diaphragm); before it the phantom's lung began above the liver's back."""
    behind, touching, depths = 0, 0, []
    for g in patient_geometries(3, 16, seed=7, protocols=("abdomen",)):
        a = PatientPhantom(g, 128).anatomy
        low, high = a.lung_full - a.recess, a.lung_full
        for f in (-0.05, 0.3, 0.6, 0.9):
            labels, masks = a.render(low + f * (high - low))
            liver, lung = masks["liver"], labels == LABEL["lung"]
            if f < 0:
                assert not lung.any()
                continue
            rows = np.nonzero(liver)[0]
            cols = np.flatnonzero(liver.any(axis=0))
            back = lung[:, cols] & (np.arange(len(lung))[:, None] > rows.mean())
            behind += int(back.any())
            depths.append(int(back.sum()))
            if low + f * (high - low) < a.lung_start:    # below the dome's top only the recess holds lung
                ring = np.roll(liver, 1, 0) | np.roll(liver, -1, 0) | np.roll(liver, 1, 1) | np.roll(liver, -1, 1)
                touching += int((ring & ~liver & lung).sum())
    assert behind >= 7, behind
    assert touching == 0, touching
    assert np.mean(depths[0::3]) < np.mean(depths[2::3]), depths


def test_the_left_lobe_is_a_thin_plate_in_some_and_deep_in_others():
    """The left lobe's depth front to back varies between people as much as its reach across: a thin plate under
    the anterior wall in some, in others (a large or hypertrophic left lobe, as on dcmqi's slices) deep enough to
    reach back to the stomach. Every phantom left lobe was under 0.55 of the body's half-depth before, and models
    trained on it stopped dcmqi-3's deep left lobe short, in homogeneous parenchyma."""
    depths = []
    for g in patient_geometries(12, 16, seed=11, protocols=("abdomen",)):
        a = PatientPhantom(g, 128).anatomy
        ox, _, bx, by = a.body
        x = ((np.arange(128) + 0.5) / 64 - 1 - ox) / bx
        deepest = 0.0
        for s in (0.6, 0.7, 0.8, 0.9):
            _, masks = a.render(a.lo + s * (a.hi - a.lo))
            rows = np.flatnonzero(masks["liver"][:, x > 0.15].any(axis=1))   # the liver left of the midline
            if len(rows):
                deepest = max(deepest, (rows.max() - rows.min() + 1) / 64 / by)
        depths.append(deepest)
    assert max(depths) >= 0.65 and min(depths) <= 0.5, np.round(depths, 2)


def test_arms_body_position_and_size_vary():
    gs = patient_geometries(40, 16, seed=0)
    assert 0.1 < np.mean([g.arms_down for g in gs]) < 0.6
    bodies = [PatientPhantom(g, 64).anatomy.body for g in gs]
    ox, bx = np.array([b[0] for b in bodies]), np.array([b[2] for b in bodies])
    assert ox.min() < -0.05 and ox.max() > 0.05                         # off-centre both ways
    assert bx.min() < 0.62 and bx.max() > 0.88                          # filling 55-95% of the field's width
    from scipy import ndimage

    g = next(g for g in gs if g.arms_down)
    s = PatientPhantom(g, 128).slice(g.num_slices // 2)
    _, parts = ndimage.label((s.labels != LABEL["air"]) & (s.labels != LABEL["table"]))
    assert parts >= 3                                                   # the body and two arms


def test_feet_first_numbering(tmp_path):
    """image_0 is the most inferior slice: a chest-abdomen scan's last file is chest, its first is not."""
    root = write_phantom(tmp_path / "p", patients=1, slices=12, size=64, seed=5, protocols=("chest_abdomen",))
    p = next(root.iterdir())
    n = len(list((p / "PATIENT_DICOM").iterdir()))
    first, last = (read_dataset(p / f"PATIENT_DICOM/image_{i}") for i in (0, n - 1))
    assert float(first.ImagePositionPatient[2]) < float(last.ImagePositionPatient[2])
    lung = [np.mean((hu_from_dataset(d) < -700) & (hu_from_dataset(d) > -950)) for d in (first, last)]
    assert lung[1] > lung[0] + 0.05, lung


@pytest.mark.slow  # two fresh worker processes
def test_patients_written_on_worker_processes_are_the_same_files(tmp_path):
    """`make run` writes its phantom on a process per core, folders in runs of SLICES_PER_JOB slices (a patient's
    slices on both workers here); each slice draws from its own seed, so the files are the same bytes as those
    written in one process, in the folder form and in the zip form."""
    kw = dict(patients=3, slices=24, size=32, seed=3)
    assert max(g.num_slices for g in patient_geometries(3, 24, 3)) > SLICES_PER_JOB
    one, two = write_phantom(tmp_path / "one", workers=1, **kw), write_phantom(tmp_path / "two", workers=2, **kw)

    def files(root):
        return {f.relative_to(root).as_posix(): f.read_bytes() for f in root.rglob("*") if f.is_file()}

    assert files(one) == files(two)
    assert {name.split("/")[0] for name in files(one)} == {f"3Dircadb1.{k}" for k in (1, 2, 3)}
    zipped = [write_phantom(tmp_path / f"z{w}.zip", workers=w, as_zip=True, **kw).read_bytes() for w in (1, 2)]
    assert zipped[0] == zipped[1]


def _above_the_liver(heights: tuple[float, ...]):
    """(labels above the liver's front edge from the top of the image down, mm per pixel) for each column through
    the liver's middle half, at `heights` (fractions of its span) of ten abdominal patients at 512 px."""
    for g in patient_geometries(10, 16, seed=11, protocols=("abdomen",)):
        a = PatientPhantom(g, 512).anatomy
        for s in heights:
            labels, masks = a.render(a.lo + s * (a.hi - a.lo))
            liver = masks["liver"]
            cols = np.flatnonzero(liver.any(axis=0))
            quarter = (cols.max() - cols.min()) // 4
            for x in range(cols.min() + quarter, cols.max() - quarter):
                yield labels[:np.argmax(liver[:, x]), x], g.spacing_mm * 512 / a.n


def test_the_anterior_wall_is_as_thick_as_on_real_ct():
    """In front of the liver lie the anterior diaphragm, the rectus and transversus muscles and, higher up, the
    costal cartilages: 12.0 and 25.5 mm before the first fat on TotalSegmentator's two example scans (columns through
    the liver's middle half). The phantom's front was the flanks' muscle alone, median 4.9 mm, and models trained on
    it drew real outlines 2.6-3.5 mm outside the liver at the front (docs/BENCHMARKS.md, "The anterior wall")."""
    fat = [LABEL["fat"], LABEL["visceral_fat"], LABEL["air"]]
    bands_mm = []
    for above, mm_per_pixel in _above_the_liver((0.4, 0.6, 0.8)):
        first_fat = np.flatnonzero(np.isin(above[::-1], fat))      # upwards from the liver's front edge
        bands_mm.append((first_fat[0] if len(first_fat) else len(above)) * mm_per_pixel)
    assert len(bands_mm) > 300
    assert 10 <= np.median(bands_mm) <= 18 and np.percentile(bands_mm, 90) >= 16, np.percentile(bands_mm, [10, 50, 90])


def test_the_costal_cartilages_lie_against_the_liver_under_the_thick_front():
    """Under the costal margin only the diaphragm and transversus thoracis lie between cartilage and liver; the
    rectus lies in front of the cartilages. With the anterior wall thick (`Anatomy.front`), the ribs that cross
    the front of the liver (columns through its middle half) stay a few millimetres from it: a median 4.6 mm,
    where they lay 11.6 mm off in the middle of the thickened muscle, and 7.8 mm before the wall was thickened."""
    gaps_mm = [(len(above) - ribs.max()) * mm_per_pixel for above, mm_per_pixel in _above_the_liver((0.6, 0.8))
               if len(ribs := np.flatnonzero(np.isin(above, BONE)))]
    assert len(gaps_mm) > 50, len(gaps_mm)
    assert np.median(gaps_mm) <= 6, np.percentile(gaps_mm, [10, 50, 90])
