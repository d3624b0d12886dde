"""3D clean-up (ctseg.postprocess), ASSD, the source-size mask in the example, and per-patient scoring."""
import numpy as np
import pytest
from scipy import ndimage

from ctseg import features, postprocess
from ctseg.components.evaluation import metrics, scoring


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius ** 2).astype(np.uint8)


def test_largest_component_drops_islands_even_when_they_touch_diagonally_only_in_3d():
    volume = ball((12, 40, 40), (6, 20, 20), 8)
    island = np.zeros_like(volume)
    island[2:4, 1:4, 1:4] = 1              # a rib-like stray blob, separate from the organ
    diagonal = np.zeros_like(volume)
    diagonal[0, 20, 29] = 1                # touches the ball only by a corner: 26-connected, so kept
    touching = volume | island | diagonal
    assert diagonal[0, 20, 29] and not volume[0, 20, 29]
    cleaned = postprocess.largest_component(touching)
    assert cleaned[island == 1].sum() == 0
    assert np.array_equal(cleaned & volume, volume)
    assert postprocess.largest_component(np.zeros((2, 4, 4))).sum() == 0


def test_fill_holes_fills_enclosed_holes_per_slice_not_notches():
    volume = np.zeros((3, 20, 20), np.uint8)
    volume[:, 4:16, 4:16] = 1
    volume[:, 8:11, 8:11] = 0            # a vessel through every slice: open in 3D, enclosed in each slice
    volume[1, 4:7, 13:15] = 0            # a notch open to the outside of the organ
    filled = postprocess.fill_holes(volume)
    assert filled[:, 8:11, 8:11].all()
    assert not filled[1, 4:7, 13:15].any()


def _largest_component_in_one_labelling(volume):
    """The reference: scipy labels the whole volume at once; of equal largest components, the lowest label."""
    from scipy import ndimage

    labels, count = ndimage.label(volume != 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return (volume != 0).astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == np.argmax(sizes)).astype(np.uint8)


def _holes_filled_in_one_call(volume):
    from scipy import ndimage

    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return ndimage.binary_fill_holes(volume, structure=in_plane).astype(np.uint8)


@pytest.mark.parametrize("chunk_slices", [1, 2, 3, 5])
def test_the_clean_up_in_chunks_is_the_clean_up_of_the_whole_volume(chunk_slices):
    """Noise volumes: many pieces that join only across a chunk border (by faces, edges or corners), and
    ties between equal largest pieces, which the chunked labelling must break as one labelling does."""
    rng = np.random.default_rng(chunk_slices)
    joined_across_borders = 0
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 12, size=3))
        volume = (rng.random(shape) < rng.uniform(0.05, 0.5)).astype(np.uint8)
        expected = _largest_component_in_one_labelling(volume)
        kept = postprocess.keep_largest_component(volume.copy(), chunk_slices)
        np.testing.assert_array_equal(kept, expected)
        np.testing.assert_array_equal(postprocess.fill_holes_in_place(volume.copy(), chunk_slices),
                                      _holes_filled_in_one_call(volume))
        joined_across_borders += any(expected[k - 1].any() and expected[k].any()
                                     for k in range(chunk_slices, shape[0], chunk_slices))
    assert joined_across_borders > 10


def test_clean_volume_steps_and_parsing():
    volume = ball((8, 32, 32), (4, 16, 16), 6)
    volume[4, 16, 16] = 0
    volume[0, 0, 0] = 1
    assert postprocess.clean_volume(volume, postprocess.Cleanup.off()).sum() == volume.sum()
    cleaned = postprocess.clean_volume(volume)
    assert cleaned[0, 0, 0] == 0 and cleaned[4, 16, 16] == 1
    only_fill = postprocess.Cleanup.parse("fill_holes")
    assert (only_fill.parenchyma_hu, only_fill.largest_component, only_fill.fill_holes) == (False, False, True)
    assert str(postprocess.Cleanup.parse("on")) == "parenchyma_hu,largest_component,foreign_ends,fill_holes"
    assert str(postprocess.Cleanup.parse("off")) == "off"
    assert str(postprocess.Cleanup.parse("largest_component, parenchyma_hu")) == "parenchyma_hu,largest_component"
    with pytest.raises(ValueError, match="largest_component"):
        postprocess.Cleanup.parse("largest")
    with pytest.raises(ValueError, match="volume"):
        postprocess.clean_volume(np.ones((4, 4)))


def test_the_hu_gate_drops_what_the_window_cannot_show_and_the_fill_gives_back_what_lies_inside():
    """A liver (110 HU) touching, across the diaphragm, a heart chamber full of arterial contrast (350 HU)
    that the model calls liver; a contrast-filled vessel (300 HU) inside the liver that the model misses;
    a fat rim (-100 HU) the model draws on the liver's edge. At the model's size, as the evaluator has it."""
    hu = np.full((6, 48, 48), 40.0, np.float32)
    liver = ball(hu.shape, (3, 24, 16), 12, spacing=(4.0, 1.0, 1.0)).astype(bool)
    chamber = ball(hu.shape, (3, 24, 36), 9, spacing=(4.0, 1.0, 1.0)).astype(bool) & ~liver
    rim = ball(hu.shape, (3, 24, 16), 14, spacing=(4.0, 1.0, 1.0)).astype(bool) & ~liver & ~chamber
    vessel = np.zeros_like(liver)
    vessel[2:5, 22:26, 14:18] = True
    hu[liver], hu[chamber], hu[rim], hu[vessel] = 110.0, 350.0, -100.0, 300.0
    probabilities = np.where(liver | chamber | rim, 0.9, 0.02).astype(np.float32)
    probabilities[vessel] = 0.2
    assert postprocess.clean_volume(postprocess.binarize(probabilities))[chamber].all()  # joined: one component

    gated = postprocess.gate_probabilities(probabilities, hu)
    assert gated[chamber | rim | vessel].max() == 0
    in_slice = np.ones((1, 3, 3), bool)
    beside = liver & ndimage.binary_dilation(chamber | vessel, structure=in_slice)  # partial volume
    assert beside.sum() > 0 and gated[beside].max() == 0
    assert np.array_equal(gated[liver & ~vessel & ~beside], probabilities[liver & ~vessel & ~beside])
    mask = postprocess.clean_volume(postprocess.binarize(gated)).astype(bool)
    next_to_chamber = liver & ndimage.binary_dilation(chamber, structure=in_slice)
    assert np.array_equal(mask, liver & ~next_to_chamber)        # the enclosed vessel and its ring filled back
    assert postprocess.outside_parenchyma(np.array([-51.0, -50.0, 260.0, 261.0])).tolist() == [True, False, False, True]
    assert postprocess.beside_denser(np.array([[[40.0, 260.0, 40.0, 40.0]]])).tolist() == [[[False] * 4]]
    assert postprocess.beside_denser(np.array([[[40.0, 261.0, 40.0, 40.0]]])).tolist() == [[[True, True, True, False]]]
    unchanged = postprocess.gate_probabilities(probabilities, hu, postprocess.Cleanup(parenchyma_hu=False))
    assert np.array_equal(unchanged, probabilities)
    with pytest.raises(ValueError, match="shape"):
        postprocess.gate_probabilities(probabilities, hu[:, :24])


def test_assd_of_known_shapes():
    truth = np.zeros((1, 30, 30), np.uint8)
    truth[0, 10:20, 10:20] = 1
    shifted = np.roll(truth, 2, axis=2)
    # one slice is all surface: 80 of each square's 100 border voxels lie on the other (distance 0), the
    # 20 others 1 or 2 columns from it (30 mm over 200 voxels); 0.5 mm pixels halve every distance
    full = metrics.assd_mm(shifted, truth, (3.0, 1.0, 1.0))
    assert full == pytest.approx(0.3)
    assert metrics.assd_mm(shifted, truth, (3.0, 0.5, 0.5)) == pytest.approx(full / 2)
    assert metrics.assd_mm(truth, truth, (1, 1, 1)) == 0.0
    assert metrics.assd_mm(np.zeros_like(truth), np.zeros_like(truth), (1, 1, 1)) == 0.0
    assert metrics.assd_mm(np.zeros_like(truth), truth, (1, 1, 1)) is None
    # a sphere of radius 10 against one of radius 8 (same centre): surfaces 2 mm apart
    big, small = ball((30, 30, 30), (15, 15, 15), 10), ball((30, 30, 30), (15, 15, 15), 8)
    assert metrics.assd_mm(big, small, (1.0, 1.0, 1.0)) == pytest.approx(2.0, abs=0.5)


def test_source_mask_round_trips_through_the_example():
    rng = np.random.default_rng(0)
    source = (rng.random((70, 90)) > 0.5).astype(np.uint8)
    example = features.slice_example(hu=np.zeros((32, 32)), mask=np.zeros((32, 32)), patient_id="p", slice_index=0,
                                     spacing_mm=0.7, thickness_mm=2.0, source_shape=(70, 90),
                                     mask_distinct_values=2, source_mask=source * 255)
    decoded = features.decode_example(example.SerializeToString())
    assert np.array_equal(decoded[features.SOURCE_MASK_KEY], source)
    assert len(example.features.feature[features.SOURCE_MASK_KEY].bytes_list.value[0]) == 70 * 90 // 8 + 1
    with pytest.raises(ValueError, match="source shape"):  # the source mask must match the source size
        features.slice_example(hu=np.zeros((32, 32)), mask=np.zeros((32, 32)), patient_id="p", slice_index=0,
                               spacing_mm=0.7, thickness_mm=2.0, source_shape=(64, 64), mask_distinct_values=2,
                               source_mask=source)
    with pytest.raises(ValueError, match="packed mask"):
        features.unpack_mask(b"\x00" * 3, (70, 90))


def patient_slices(truth_source, probabilities, order, spacing_mm=0.8, thickness_mm=2.5):
    """A PatientSlices fed in `order` (not slice order), as batches from several shards arrive."""
    slices = scoring.PatientSlices()
    h, w = probabilities.shape[1:]
    model_truth = truth_source[:, ::truth_source.shape[1] // h, ::truth_source.shape[2] // w]
    for i in order:
        batch = {"slice_index": [i], "mask": model_truth[i:i + 1], "hu": np.zeros((1, h, w), np.float32),
                 "source_mask": [features.pack_mask(truth_source[i])], "source_shape": [truth_source.shape[1:]],
                 "voxel_ml": [0.1], "spacing_mm": [spacing_mm], "thickness_mm": [thickness_mm]}
        slices.add(batch, 0)
    return slices


def test_score_patient_cleans_up_and_scores_at_the_source_resolution():
    truth = ball((10, 128, 128), (5, 64, 64), 40, spacing=(4.0, 1.0, 1.0))  # source truth, 128 px
    coarse = truth[:, ::4, ::4].astype(np.float32)                          # model size 32 px
    probabilities = coarse * 0.9
    probabilities[2:4, 1:3, 1:3] = 0.95                                     # a stray island
    slices = patient_slices(truth, probabilities, order=[3, 0, 9, 1, 2, 8, 4, 7, 6, 5])
    on = scoring.score_patient("p", slices, probabilities, postprocess.Cleanup())
    off = scoring.score_patient("p", slices, probabilities, postprocess.Cleanup.off())
    def dice(o):
        return float(metrics.dice_from_counts(o.intersection.sum(), o.predicted.sum(), o.truth.sum()))

    assert dice(on.model_size) > dice(on.raw_model_size) == pytest.approx(dice(off.model_size))
    assert on.source.truth.sum() == truth.sum()      # scored against the 128 px truth, not an upsampled one
    assert dice(on.source) > 0.95
    assert 0 < on.assd_mm < off.assd_mm < 2.0        # the island is far from the surface: ASSD shows it
    assert on.model_size.truth.tolist() == coarse.reshape(10, -1).sum(axis=1).tolist()  # slice order restored

    summary = scoring.summarize([on], postprocess.Cleanup())
    row = summary["patients"][0]
    assert row["source_dice"] == pytest.approx(summary["source_resolution"]["mean_patient_dice"])
    assert row["dice"] > row["dice_before_cleanup"]
    assert summary["cleanup"] == "parenchyma_hu,largest_component,foreign_ends,fill_holes"


def test_examples_without_a_source_mask_still_score_at_model_size():
    truth = ball((4, 64, 64), (2, 32, 32), 20, spacing=(4.0, 1.0, 1.0))
    probabilities = truth[:, ::2, ::2].astype(np.float32)
    slices = patient_slices(truth, probabilities, order=range(4))
    slices.source_mask = [b""] * 4
    score = scoring.score_patient("p", slices, probabilities, postprocess.Cleanup())
    assert score.source is None and score.assd_mm is None
    assert scoring.summarize([score], postprocess.Cleanup())["source_resolution"] is None


def _liver_with_colon_below(colon_hu=10.0):
    """16 slices of 8x8: liver (60 HU) on slices 4-15 and, joined to its lowest slice, a colon (colon_hu) on 0-3;
    the HU at half the mask's size, as the model reads them."""
    mask = np.zeros((16, 8, 8), np.uint8)
    mask[:, 2:6, 2:6] = 1
    hu = np.full((16, 4, 4), -100.0, np.float32)
    hu[4:, 1:3, 1:3] = 60.0
    hu[:4, 1:3, 1:3] = colon_hu
    return mask, hu


def test_end_slices_of_another_tissue_are_trimmed_and_the_organs_own_are_kept():
    """The colon that the largest component runs on into below the liver's tip reads 31-39 HU below the liver on
    ts-112; the liver's own slices keep within 14 HU of its median (docs/BENCHMARKS.md, "A sixteenth session")."""
    mask, hu = _liver_with_colon_below()
    organ, medians = postprocess.slice_hu_medians(mask, hu)
    assert organ == 60.0 and medians[0] == 10.0 and medians[-1] == 60.0
    trimmed = postprocess.trim_foreign_ends(mask.copy(), hu)
    assert not trimmed[:4].any() and (trimmed[4:] == mask[4:]).all()
    near_mask, near_hu = _liver_with_colon_below(colon_hu=60.0 - postprocess.ORGAN_SLICE_HU_TOLERANCE + 1)
    assert (postprocess.trim_foreign_ends(near_mask.copy(), near_hu) == near_mask).all()
    # the same at the top (a heart above the dome in the portal phase), and through clean_volume
    flipped = postprocess.clean_volume(mask[::-1].copy(), hu_at_model_size=hu[::-1].copy())
    assert not flipped[-4:].any() and (flipped[:-4] == mask[::-1][:-4]).all()
    assert postprocess.clean_volume(mask.copy()).sum() == mask.sum()   # without the HU the step is skipped


def test_a_hypodense_lesion_inside_the_liver_never_ends_the_mask():
    mask, hu = _liver_with_colon_below(colon_hu=60.0)
    hu[7:10, 1:3, 1:3] = 0.0   # three slices through a cyst in the middle of the liver
    assert (postprocess.trim_foreign_ends(mask.copy(), hu) == mask).all()
    assert postprocess.Cleanup.parse("foreign_ends") == postprocess.Cleanup(
        parenchyma_hu=False, largest_component=False, foreign_ends=True, fill_holes=False)
