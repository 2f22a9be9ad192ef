import shutil

import numpy as np
import pytest
from anobench.datasets import AnomalyDataset, DatasetError, Geometry, create_dataset
from anobench.datasets.synthetic import CLASSES, DEFECT_KINDS, SynthSpec, write_dataset
from PIL import Image

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


@pytest.mark.parametrize("name,category,n_train", [("bsdata", "ball_screw", 274), ("magnetic_tile", "magnetic_tile", 762)])
def test_shared_real_datasets_load_in_mvtec_layout(name, category, n_train):
    source = create_dataset("folder", shared_dataset(name))
    assert source.classes() == [category]
    source.validate(category)
    assert len(source.samples(category, "train")) == n_train
    test = source.samples(category, "test")
    assert any(r.label == 0 for r in test) and any(r.label == 1 for r in test)
    sample = AnomalyDataset(test[-1:], Geometry(64, 64))[0]
    assert sample["image"].shape == (3, 64, 64)
