import numpy as np
import pytest

from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, DatasetError, Geometry
from tests.fake_stc import write_fake_stc


@pytest.fixture(scope="module")
def fake_stc(tmp_path_factory):
    return write_fake_stc(tmp_path_factory.mktemp("stc") / "shanghaitech")


def test_training_frames_are_decoded_once_with_the_stride(fake_stc, tmp_path):
    source = create_dataset("stc", fake_stc, frame_stride=3, cache=str(tmp_path / "cache"))
    assert source.classes() == ["01", "02"]
    source.validate("01")
    train = source.samples("01", "train")
    assert len(train) == 2 * 4  # two videos of 10 frames, every 3rd: 0, 3, 6, 9
    assert [p.image_path.name for p in train[:4]] == ["01_001_00000.jpg", "01_001_00003.jpg", "01_001_00006.jpg",
                                                      "01_001_00009.jpg"]
    stamp = train[0].image_path.stat().st_mtime_ns
    assert source.samples("01", "train")[0].image_path.stat().st_mtime_ns == stamp  # cached, not decoded again
    every = create_dataset("stc", fake_stc, cache=str(tmp_path / "cache")).samples("01", "train")
    assert len(every) == 20  # the default: every frame


def test_test_frames_carry_frame_labels_and_pixel_masks(fake_stc, tmp_path):
    source = create_dataset("stc", fake_stc, cache=str(tmp_path / "cache"))
    test = source.samples("02", "test")
    assert [r.label for r in test] == [0, 0, 0, 0, 1, 1, 1, 1]
    dataset = AnomalyDataset(test, Geometry(32, 32))
    assert dataset[0]["mask"].sum() == 0 and dataset[5]["mask"].sum() > 0
    original = source.original_mask(test[5])
    assert original.shape == (48, 64) and original.sum() == 120


def test_layout_problems_are_one_sentence(fake_stc, tmp_path):
    with pytest.raises(DatasetError, match=r"No training video .*03_\*.avi for scene 03"):
        create_dataset("stc", fake_stc).validate("03")
    broken = tmp_path / "broken"
    write_fake_stc(broken, scenes=("01",))
    (broken / "testing/test_pixel_mask/01_0001.npy").unlink()
    with pytest.raises(DatasetError, match=r"has no test_pixel_mask file"):
        create_dataset("stc", broken).validate("01")
    np.save(broken / "testing/test_pixel_mask/01_0001.npy", np.zeros((3, 48, 64), np.uint8))
    with pytest.raises(DatasetError, match=r"covers 3 frames but .* holds 8"):
        create_dataset("stc", broken).validate("01")
