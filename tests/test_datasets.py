import shutil

import numpy as np
import pytest
from PIL import Image

from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, DatasetError, Geometry, image_files, image_header
from anobench.datasets.synthetic import CLASSES, DEFECT_KINDS, SynthSpec, write_dataset
from tests.conftest import shared_dataset


def test_synthetic_is_byte_identical_for_the_same_seed(tmp_path):
    spec = SynthSpec(seed=3, size=48, train=3, test_good=2, test_per_defect=1)
    write_dataset(tmp_path / "a", spec)
    write_dataset(tmp_path / "b", spec)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    write_dataset(tmp_path / "c", SynthSpec(seed=4, size=48, train=3, test_good=2, test_per_defect=1))
    assert (tmp_path / "a/disc/train/good/000.png").read_bytes() != (tmp_path / "c/disc/train/good/000.png").read_bytes()


def test_synthetic_has_textures_objects_defect_kinds_and_exact_masks(tiny_data):
    kinds = {kind for kind, _ in CLASSES.values()}
    assert kinds == {"texture", "object"} and sum(k == "texture" for k, _ in CLASSES.values()) >= 2
    assert len(DEFECT_KINDS) >= 3
    source = create_dataset("folder", tiny_data)
    test = source.samples("disc", "test")
    assert {r.defect_type for r in test} == {"good", *DEFECT_KINDS}
    for ref in test:
        if ref.label:
            mask = np.asarray(Image.open(ref.mask_path))
            assert set(np.unique(mask)) == {0, 255}  # exact, binary
    sizes = [np.count_nonzero(np.asarray(Image.open(r.mask_path))) for r in test if r.label]
    assert min(sizes) < 0.01 * 64 * 64  # some defects are small


def test_mvtec_validation_names_the_missing_class(tmp_path):
    source = create_dataset("mvtec", tmp_path)
    with pytest.raises(DatasetError, match=r"Class folder .*bottle does not exist.*Expected layout"):
        source.validate("bottle")
    with pytest.raises(DatasetError, match="not an MVTec AD class"):
        source.validate("bottles")


def test_missing_data_root_is_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match="needs a data root; pass --data-root"):
        create_dataset("mvtec", None)
    with pytest.raises(DatasetError, match="does not exist; pass --data-root"):
        create_dataset("folder", tmp_path / "nowhere")


def test_defect_image_without_mask_and_empty_train_are_rejected(tiny_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    mask = root / "disc/ground_truth/stain/000_mask.png"
    mask.unlink()
    with pytest.raises(DatasetError, match=r"Defect image .*stain/000.png has no mask .*000_mask.png"):
        create_dataset("folder", root).validate("disc")
    for image in (root / "stripes/train/good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"train/good is missing or holds no images"):
        create_dataset("folder", root).validate("stripes")


def test_unreadable_image_is_a_clear_error(tiny_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    (root / "disc/train/good/000.png").write_bytes(b"not a png")
    dataset = AnomalyDataset(create_dataset("folder", root).samples("disc", "train"), Geometry(32, 32))
    with pytest.raises(DatasetError, match=r"Cannot read image .*000.png"):
        dataset[0]


def test_folder_root_may_be_a_single_class(tiny_data):
    source = create_dataset("folder", tiny_data / "disc")
    assert source.classes() == ["disc"]
    source.validate("disc")
    assert len(source.samples("disc", "train")) == 12


def test_samples_are_resized_cropped_rgb_with_binary_masks(tmp_path):
    class_dir = tmp_path / "gray"
    (class_dir / "train/good").mkdir(parents=True)
    (class_dir / "test/hole").mkdir(parents=True)
    (class_dir / "ground_truth/hole").mkdir(parents=True)
    Image.fromarray(np.full((30, 50), 100, np.uint8), "L").save(class_dir / "train/good/a.png")
    Image.fromarray(np.full((40, 20), 100, np.uint8), "L").save(class_dir / "test/hole/b.png")
    soft = np.zeros((40, 20), np.uint8)
    soft[10:30, 5:15] = 200
    soft[0, 0] = 60  # a soft edge: non-zero, so a defect pixel too
    Image.fromarray(soft, "L").save(class_dir / "ground_truth/hole/b_mask.png")
    dataset = AnomalyDataset(create_dataset("folder", class_dir).samples("gray", "test"), Geometry(32, 24))
    sample = dataset[0]
    assert sample["image"].shape == (3, 24, 24)  # grayscale became RGB, varying sizes became square
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert set(sample["mask"].unique().tolist()) == {0, 1}
    assert sample["label"] == 1 and sample["defect_type"] == "hole"


@pytest.mark.parametrize("name,category,n_train,empty_masks",
                         [("bsdata", "ball_screw", 274, False), ("magnetic_tile", "magnetic_tile", 762, True)])
def test_shared_real_datasets_load_in_mvtec_layout(name, category, n_train, empty_masks):
    source = create_dataset("folder", shared_dataset(name), allow_empty_masks=empty_masks)
    assert source.classes() == [category]
    source.validate(category)
    assert len(source.samples(category, "train")) == n_train
    test = source.samples(category, "test")
    assert any(r.label == 0 for r in test) and any(r.label == 1 for r in test)
    sample = AnomalyDataset(test[-1:], Geometry(64, 64))[0]
    assert sample["image"].shape == (3, 64, 64)


def test_real_defect_images_with_entirely_empty_masks_are_reported():
    """Four of Magnetic Tile's 'uneven' defect images have all-zero masks: the layout check names the first,
    and the dataset option allows them where that is intended."""
    root = shared_dataset("magnetic_tile")
    with pytest.raises(DatasetError, match=r"Defect image .*uneven/exp3_num_45042.png has an entirely empty mask "
                                           r".*exp3_num_45042_mask.png; fix the mask, or set the dataset option "
                                           r"allow_empty_masks = true"):
        create_dataset("folder", root).validate("magnetic_tile")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_image_header_finds_truncated_files_of_every_format(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
    assert image_header(path) == (30, 40)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DatasetError, match=rf"Cannot use image .*a\{suffix} \(.*\); replace or remove the file"):
        image_header(path)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"\(it is empty: 0 bytes\)"):
        image_header(path)
    for trailing in (100, 10_000):  # bytes after the end marker, as a few writers leave: still whole
        path.write_bytes(whole + b"\0" * trailing)
        assert image_header(path) == (30, 40)


def test_hidden_and_os_metadata_files_are_not_images(tmp_path):
    for name in ("000.png", "._000.png", ".DS_Store", "Thumbs.db", "desktop.ini", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["000.png"]
