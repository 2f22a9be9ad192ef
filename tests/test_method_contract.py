"""Every shipped method keeps the method contract (the conformance kit, as a plugin's tests would use it),
and the kit catches methods that break it."""

import os

import pytest
import torch

from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.methods import METHODS, list_methods
from anobench.methods.base import harness_arguments
from anobench.methods.marks import Presentation
from anobench.testing import assert_method_conforms, check_method, check_params
from tests.broken_methods import BatchDependentPaDiM, UnstableParamsPaDiM
from tests.conftest import REPO, run_bench

SIZE = 64


def make(name, seed=0, **extra):
    """A method with the conformance checks' quick settings (random ResNet-18, short schedule), for other tests."""
    cls = METHODS.get(name)
    return cls(**check_params(cls, {"seed": seed, **extra}))


def batches(tiny_data, class_name="disc", split="train", size=SIZE):
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples(class_name, split), Geometry(size, size))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    return [images[i:i + 8] for i in range(0, len(images), 8)]


@pytest.mark.parametrize("name", [n for n in list_methods() if METHODS.entry(n).origin == "built-in"])
def test_every_shipped_method_conforms(name):
    assert_method_conforms(name)


def verdicts(method) -> dict[str, bool | None]:
    return {r.name: r.passed for r in check_method(method)}


def test_scores_that_depend_on_the_batch_fail_the_batch_property_only():
    results = verdicts(BatchDependentPaDiM)
    assert results["an image scores the same alone and in a batch"] is False
    assert [name for name, passed in results.items() if passed is False] == [
        "an image scores the same alone and in a batch"]


def test_parameters_that_do_not_round_trip_fail_by_name():
    results = verdicts(UnstableParamsPaDiM)
    assert results["get_params() round-trips through the constructor"] is False
    assert results["save() and load() give identical scores"] is False  # load builds from get_params()
    assert results["fit() returns the method"] is True


def test_check_method_command_names_the_broken_property_and_exits_1():
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = run_bench("check-method", "tests.broken_methods:BatchDependentPaDiM", env=env)
    assert result.returncode == 1, result.stderr
    assert "FAIL  an image scores the same alone and in a batch: image 0 alone vs in a batch" in result.stdout
    assert "12 of 13 properties hold; 1 fail." in result.stdout


def test_check_method_command_refuses_bad_params_in_one_sentence():
    result = run_bench("check-method", "padim", "--param", "d reduced=3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "KEY=VALUE" in result.stderr
    result = run_bench("check-method", "padim", "--param", "d_reducd=3")
    assert result.returncode == 2 and "d_reducd" in result.stderr, result.stderr


def test_the_harness_passes_the_parameters_a_constructor_takes():
    values = {"encoder": "resnet18", "weights": "random", "seed": 3, "device": "cpu", "protocol": "paper"}

    class NoEncoder:
        def __init__(self, *, seed=0, device="cpu"): ...

    class Anything:
        def __init__(self, **kwargs): ...

    assert harness_arguments(NoEncoder, values) == {"seed": 3, "device": "cpu"}
    assert harness_arguments(Anything, values) == values
    assert set(harness_arguments(METHODS.get("cflow"), values)) == set(values)
    assert "protocol" not in harness_arguments(METHODS.get("padim"), values)


@pytest.mark.parametrize("name", ["cflow", "fastflow", "padim", "patchcore", "spade"])
def test_a_builtins_registered_presentation_is_its_classs(name):
    """Reports read a built-in's name, marks and encoder-only rows from its registration (no torch import):
    they must be what the class declares."""
    registered = METHODS.entry(name).meta["presentation"]
    assert registered == Presentation.of(METHODS.get(name))
