"""The published datasets' sources on fakes of their exact layouts: what they read, and one sentence for
each kind of damage (a missing split file, a mask of the wrong size, an image the split names but the
folder lacks)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from anobench.core import BenchError
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, DatasetError, Geometry
from anobench.fetch import convert_visa
from anobench.runner import RunOptions, apply_overrides, plan
from anobench.suites import parse_suite
from tests import fake_datasets as fake
from tests.conftest import run_bench
from tests.test_cli import assert_one_sentence


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One small fake of every dataset (all classes), written once for the module."""
    base = tmp_path_factory.mktemp("published")
    return {
        "visa": fake.write_fake_visa(base / "VisA"),
        "mpdd": fake.write_fake_mpdd(base / "MPDD"),
        "btad": fake.write_fake_btad(base / "btad"),
        "mvtec_loco": fake.write_fake_loco(base / "loco"),
        "mvtec_ad2": fake.write_fake_ad2(base / "mvtec_ad_2"),
        "ksdd2": fake.write_fake_ksdd2(base / "KolektorSDD2"),
        "realiad": fake.write_fake_realiad(base / "Real-IAD"),
    }


def copy_of(roots, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(roots[name], target)
    return target


def validate_all(name, root, **options):
    source = create_dataset(name, root, **options)
    for class_name in source.classes():
        source.validate(class_name)
    return source


def save_resized(path, size=(7, 5)):
    """Overwrite an image or mask with a copy of another size (same mode and format)."""
    with Image.open(path) as img:
        img.load()
        resized = img.resize(size)
    resized.save(path, format=img.format)


# ----------------------------------------------------------------------------------------------------------
# what each source reads


def test_visa_original_reads_the_crlf_split_and_class_id_masks(roots):
    raw = (roots["visa"] / "split_csv/1cls.csv").read_bytes()
    assert (
        raw.startswith(b"object,split,label,image,mask\r\n") and b".JPG,\r\n" in raw
    )  # the real file's shape
    source = validate_all("visa", roots["visa"])
    assert source.layout == "original" and len(source.classes()) == 12
    train, test = source.samples("candle", "train"), source.samples("candle", "test")
    assert [p.image_path.name for p in train][:2] == ["0000.JPG", "0001.JPG"]  # 4-digit normals for candle
    assert source.samples("capsules", "train")[0].image_path.name == "000.JPG"  # 3-digit elsewhere
    anomalous = [r for r in test if r.label == 1]
    assert len(anomalous) == 3 and all(r.mask_path.suffix == ".png" for r in anomalous)
    values = np.unique(np.asarray(Image.open(anomalous[1].mask_path)))
    assert values.tolist() == [0, 2]  # a class id, not 255 ...
    mask = source.original_mask(anomalous[1])
    assert mask.sum() == np.count_nonzero(
        np.asarray(Image.open(anomalous[1].mask_path))
    )  # ... read as defect
    sample = AnomalyDataset(anomalous, Geometry(32, 32), source.read_mask)[0]
    assert sample["mask"].sum() > 0 and mask.shape == (40, 48)  # non-square, never assumed square


def test_visa_converted_layouts_read_the_same_defects(roots, tmp_path):
    converted = convert_visa(roots["visa"], tmp_path / "visa_mvtec")
    assert np.unique(np.asarray(Image.open(converted / "pcb1/ground_truth/bad/001.png"))).tolist() == [0, 255]
    original = create_dataset("visa", roots["visa"])
    source = validate_all("visa", converted)
    assert source.layout == "converted"
    for split in ("train", "test"):
        ours = source.samples("pcb1", split)
        theirs = original.samples("pcb1", split)
        assert sorted(r.image_path.name for r in ours) == sorted(r.image_path.name for r in theirs)
    defect = next(r for r in source.samples("pcb1", "test") if r.label)
    same = next(r for r in original.samples("pcb1", "test") if r.image_path.name == defect.image_path.name)
    assert np.array_equal(source.read_mask(defect), original.read_mask(same))
    anomalib = fake.write_fake_visa_anomalib(tmp_path / "anomalib_visa")  # visa_pytorch/, 3-channel masks
    source = create_dataset("visa", anomalib)
    source.validate("candle")
    assert source.root.name == "visa_pytorch"
    defect = next(r for r in source.samples("candle", "test") if r.label)
    assert Image.open(defect.mask_path).mode == "RGB" and source.read_mask(defect).any()


def test_mpdd_btad_ksdd2_read_their_conventions(roots):
    mpdd = validate_all("mpdd", roots["mpdd"])
    assert {r.defect_type for r in mpdd.samples("metal_plate", "test")} == {
        "good",
        "major_rust",
        "scratches",
        "total_rust",
    }
    btad = validate_all("btad", roots["btad"])  # the folder holding BTech_Dataset_transformed/
    assert btad.root.name == "BTech_Dataset_transformed"
    for name, image_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        test = btad.samples(name, "test")
        assert {r.defect_type for r in test} == {"good", "ko"} and {r.label for r in test} == {0, 1}
        defect = next(r for r in test if r.label)
        assert (defect.image_path.suffix, defect.mask_path.suffix) == (image_ext, mask_ext)
        assert defect.mask_path.stem == defect.image_path.stem and btad.original_mask(defect).any()
    ksdd2 = validate_all("ksdd2", roots["ksdd2"])
    train, test = ksdd2.samples("ksdd2", "train"), ksdd2.samples("ksdd2", "test")
    assert len(train) == 6 and all(r.label == 0 for r in train)  # defect-free only; "(copy)" ignored
    assert [r.label for r in test] == [0, 0, 0, 1, 1, 1]  # from the ground truth's content
    assert all(ksdd2.original_mask(r).any() for r in test if r.label)  # 3-channel GT too


def test_loco_channels_carry_their_configured_saturation(roots):
    source = validate_all("mvtec_loco", roots["mvtec_loco"])
    test = source.samples("pushpins", "test")
    assert {r.defect_type for r in test} == {"good", "logical_anomalies", "structural_anomalies"}
    two = next(r for r in test if r.defect_type == "logical_anomalies" and r.image_path.stem == "000")
    channels = source.defect_channels("pushpins", two)
    assert [c.config.pixel_value for c in channels] == [255, 254]
    assert np.array_equal(source.read_mask(two), channels[0].mask | channels[1].mask)
    absolute, relative = channels[0].config, channels[1].config
    assert absolute.saturation_area(100) == 40 and absolute.saturation_area(30) == 30  # min(threshold, area)
    assert absolute.saturation_area(100, area_scale=0.5) == 20  # scaled to the evaluated resolution
    assert relative.saturation_area(37) == 37
    assert source.samples("pushpins", "validation") and len(source.samples("pushpins", "train")) == 6
    with_validation = create_dataset("mvtec_loco", roots["mvtec_loco"], train_with_validation=True)
    assert len(with_validation.samples("pushpins", "train")) == 8


def test_loco_channel_with_an_unconfigured_value_is_refused(roots, tmp_path):
    root = copy_of(roots, "mvtec_loco", tmp_path)
    channel = root / "pushpins/ground_truth/structural_anomalies/000/000.png"
    values = np.asarray(Image.open(channel)).copy()
    values[values > 0] = 7
    Image.fromarray(values, "L").save(channel)
    source = create_dataset("mvtec_loco", root)
    ref = next(
        r
        for r in source.samples("pushpins", "test")
        if r.mask_path and r.mask_path.name == "000" and r.defect_type == "structural_anomalies"
    )
    with pytest.raises(
        DatasetError,
        match=r"000.png must hold 0 and one pixel value of .*"
        r"defects_config.json \(253, 254, 255\), found \[7\]",
    ):
        source.defect_channels("pushpins", ref)


def test_ad2_public_and_private_splits(roots, tmp_path):
    public = validate_all("mvtec_ad2", roots["mvtec_ad2"])
    test = public.samples("can", "test")
    assert [r.image_path.name for r in test if r.label] == [
        "000_regular.png",
        "001_overexposed.png",
        "002_shift_1.png",
    ]
    assert all(r.mask_path.name == r.image_path.stem + "_mask.png" for r in test if r.label)
    assert len(public.samples("can", "validation")) == 3
    private = validate_all("mvtec_ad2", roots["mvtec_ad2"], test_split="private")
    refs = private.samples("can", "test")
    assert {r.image_path.parent.name for r in refs} == {"test_private", "test_private_mixed"}
    assert {r.label for r in refs} == {-1} and private.ground_truth("can")[0] == "none"
    nested = tmp_path / "per_class"  # an archive extracted per class: <class>/<class>/...
    shutil.copytree(roots["mvtec_ad2"] / "can", nested / "can" / "can")
    assert create_dataset("mvtec_ad2", nested).samples("can", "train")[0].image_path.parts[-5:-3] == (
        "can",
        "can",
    )
    with pytest.raises(DatasetError, match="test_split must be one of"):
        create_dataset("mvtec_ad2", roots["mvtec_ad2"], test_split="test")


def test_realiad_reads_json_splits_and_sample_keys(roots, tmp_path):
    source = validate_all("realiad", roots["realiad"])  # realiad_256 found by resolution "auto"
    test = source.samples("audiojack", "test")
    assert (
        len(test) == 10
        and sum(r.label for r in test) == 5
        and {r.defect_type for r in test} == {"good", "QS"}
    )
    keys = {source.sample_key(r) for r in test}
    assert keys == {"audiojack__0003_OK", "audiojack__0004_NG_QS"}  # double underscore kept from the JSON
    assert {source.sample_key(r) for r in source.samples("bottle_cap", "test")} == {
        "bottle_cap_0003_OK",
        "bottle_cap_0004_NG_QS",
    }
    nested = tmp_path / "nested"  # anomalib's realiad_jsons/realiad_jsons/<class>.json
    shutil.copytree(roots["realiad"] / "realiad_256" / "toy", nested / "realiad_256" / "toy")
    (nested / "realiad_jsons" / "realiad_jsons").mkdir(parents=True)
    shutil.copy(roots["realiad"] / "realiad_jsons" / "toy.json", nested / "realiad_jsons" / "realiad_jsons")
    create_dataset("realiad", nested).validate("toy")


def test_an_option_the_source_does_not_take_is_named(roots):
    with pytest.raises(
        DatasetError, match="Dataset 'btad' does not take the option 'test_split'; its options: allow_empty_masks[.]"
    ):
        create_dataset("btad", roots["btad"], test_split="x")


# ----------------------------------------------------------------------------------------------------------
# damaged fakes: one sentence each, before any work


def _first(root, pattern):
    return sorted(root.glob(pattern))[0]


def _drop_csv_row_image(root):
    rel = (root / "split_csv/1cls.csv").read_text().splitlines()[3].split(",")[3]
    (root / rel).unlink()


def _drop_json_image(root):
    entry = json.loads((root / "realiad_jsons/audiojack.json").read_text())["test"][0]
    (root / "realiad_256/audiojack" / entry["image_path"]).unlink()


DAMAGES = {
    # dataset: (missing split file, wrong-size mask, image the split names but the folder lacks)
    "visa": (
        (
            lambda r: (r / "split_csv/1cls.csv").unlink(),
            r"VisA split file .*1cls.csv \(the one-class split\) is missing; is --data-root",
        ),
        (
            lambda r: save_resized(_first(r, "pcb1/Data/Masks/Anomaly/*.png")),
            r"Mask .*000.png is 7×5 but its image .*000.JPG is 48×40",
        ),
        (
            _drop_csv_row_image,
            r"Image .*candle/Data/Images/Normal/0002.JPG named in .*1cls.csv line 4 is missing",
        ),
    ),
    "mpdd": (
        (lambda r: shutil.rmtree(r / "tubes/train"), r"tubes/train/good is missing or holds no images"),
        (
            lambda r: save_resized(_first(r, "tubes/ground_truth/flattening/*.png")),
            r"Mask .*000_mask.png is 7×5",
        ),
        (
            lambda r: _first(r, "tubes/test/flattening/*.png").unlink(),
            r"Mask .*000_mask.png belongs to the image .*flattening/000.\*, which is missing",
        ),
    ),
    "btad": (
        (
            lambda r: shutil.rmtree(r / "BTech_Dataset_transformed/02/train"),
            r"02/train/ok is missing or holds no images",
        ),
        (
            lambda r: save_resized(_first(r, "BTech_Dataset_transformed/03/ground_truth/ko/*.bmp")),
            r"Mask .*03/ground_truth/ko/0000.bmp is 7×5",
        ),
        (
            lambda r: _first(r, "BTech_Dataset_transformed/01/test/ko/*.bmp").unlink(),
            r"Mask .*01/ground_truth/ko/0000.png belongs to the image",
        ),
    ),
    "mvtec_loco": (
        (
            lambda r: (r / "juice_bottle/defects_config.json").unlink(),
            r"Defects configuration .*juice_bottle/defects_config.json is missing",
        ),
        (
            lambda r: save_resized(_first(r, "screw_bag/ground_truth/logical_anomalies/000/001.png")),
            r"Mask .*000/001.png is 7×5",
        ),
        (
            lambda r: _first(r, "pushpins/test/structural_anomalies/*.png").unlink(),
            r"Ground-truth folder .*structural_anomalies/000 belongs to the image .*000.png, which is "
            r"missing",
        ),
    ),
    "mvtec_ad2": (
        (
            lambda r: shutil.rmtree(r / "vial/validation"),
            r"vial/validation/good is missing or holds no NNN_\*.png images; every class needs defect-free "
            r"validation images",
        ),
        (
            lambda r: save_resized(_first(r, "rice/test_public/ground_truth/bad/*.png")),
            r"Mask .*000_regular_mask.png is 7×5",
        ),
        (
            lambda r: _first(r, "walnuts/test_public/bad/*.png").unlink(),
            r"Mask .*000_regular_mask.png belongs to the image .*bad/000_regular.png, which is missing",
        ),
    ),
    "ksdd2": (
        (lambda r: shutil.rmtree(r / "test"), r"ksdd2/test is missing; is --data-root"),
        (lambda r: save_resized(r / "train/10003_GT.png"), r"Mask .*10003_GT.png is 7×5"),
        (
            lambda r: (r / "test/10010.png").unlink(),
            r"Ground truth .*10010_GT.png names the image .*10010.png, which is missing",
        ),
    ),
    "realiad": (
        (
            lambda r: (r / "realiad_jsons/zipper.json").unlink(),
            r"Real-IAD split file .*zipper.json is missing",
        ),
        (
            lambda r: save_resized(_first(r, "realiad_256/mint/NG/QS/S0004/*C1*.png")),
            r"Mask .*_C1_.*png is 7×5",
        ),
        (
            _drop_json_image,
            r"Image .*audiojack/OK/S0003/audiojack__0003_OK_C1_.*jpg named in .*audiojack.json \('test'\) "
            r"is missing",
        ),
    ),
}


def check_layout(name, root):
    """What `bench run` does before any work: resolve the suite and check every class folder."""
    suite = parse_suite(
        {
            "name": "t",
            "version": 1,
            "dataset": {"name": name, "root": str(root)},
            "grid": [{"methods": ["padim"], "encoders": ["resnet18"], "resolutions": [32]}],
            "weights": "random",
        },
        root / "t.toml",
    )
    plan(apply_overrides(suite, RunOptions()), RunOptions())


@pytest.mark.parametrize("name", sorted(DAMAGES))
@pytest.mark.parametrize("damage", [0, 1, 2], ids=["missing-split-file", "mask-size", "image-missing"])
def test_damaged_fake_gives_one_sentence(roots, tmp_path, name, damage):
    root = copy_of(roots, name, tmp_path)
    check_layout(name, root)  # intact: passes
    spoil, message = DAMAGES[name][damage]
    spoil(root)
    with pytest.raises(BenchError, match=message) as raised:
        check_layout(name, root)
    text = str(raised.value)
    assert "\n" not in text and text.endswith(".")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["visa", "mvtec_loco"]
)  # the same path for every dataset (plan → BenchError)
def test_damaged_fake_on_the_command_line_exits_2(roots, tmp_path, name):
    root = copy_of(roots, name, tmp_path)
    spoil, message = DAMAGES[name][1]
    spoil(root)
    suite = tmp_path / "s.toml"
    suite.write_text(
        f'name = "s"\nversion = 1\nweights = "random"\n[dataset]\nname = "{name}"\n'
        '[[grid]]\nmethods = ["padim"]\nencoders = ["resnet18"]\nresolutions = [32]\n'
    )
    result = run_bench("run", "--suite", str(suite), "--data-root", str(root), "--out", str(tmp_path / "run"))
    assert_one_sentence(result, 2, "is 7×5 but its image")
    assert not (tmp_path / "run").exists()


# a defect mask (for LOCO: one defect channel) blanked; KolektorSDD2 labels by its masks, so it has none
EMPTY_MASKS = {
    "visa": "*/Data/Masks/Anomaly/*.png",
    "mpdd": "*/ground_truth/*/*_mask.png",
    "btad": "**/ground_truth/ko/*",
    "mvtec_loco": "*/ground_truth/*/*/*.png",
    "mvtec_ad2": "*/test_public/ground_truth/bad/*_mask.png",
    "realiad": "realiad_*/*/NG/*/*/*.png",
}


@pytest.mark.parametrize("name", sorted(EMPTY_MASKS))
def test_an_empty_defect_mask_goes_through_the_shared_layout_check(roots, tmp_path, name):
    root = copy_of(roots, name, tmp_path)
    mask = sorted(root.glob(EMPTY_MASKS[name]))[0]
    with Image.open(mask) as img:
        img.load()
        blank = Image.new(img.mode, img.size)
    blank.save(mask, format=img.format)
    if name == "realiad":  # the published data has NG views with empty masks: allowed unless refused
        validate_all(name, root)
        with pytest.raises(DatasetError, match="entirely empty mask"):
            validate_all(name, root, allow_empty_masks=False)
        return
    with pytest.raises(DatasetError, match=f"has an entirely empty mask {mask}; fix the mask, or set the "
                                           "dataset option allow_empty_masks"):
        validate_all(name, root)
    validate_all(name, root, allow_empty_masks=True)
