import pytest

from anobench.core import BenchError
from anobench.runner import check_suite
from anobench.suites import GridBlock, MeasureSpec, available_suites, load_suite, suite_keys, suite_source

BUILTIN = sorted(available_suites())


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_suites_load_and_name_only_known_things(name):
    suite = load_suite(name)
    check_suite(suite)
    assert suite.name == name and suite.version >= 1 and suite.description


def test_a_run_names_a_builtin_suite_by_its_place_in_the_package_and_any_other_as_given(tmp_path, monkeypatch):
    assert suite_source(load_suite("smoke").path) == "anobench:suites/smoke.toml"
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert suite_source(load_suite("s.toml").path) == "s.toml"


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


MINIMAL = """
name = "t"
version = 1
[dataset]
name = "synthetic"
[[grid]]
methods = ["padim"]
encoders = ["resnet18"]
resolutions = [64]
"""


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "foo = 1\n" + MINIMAL)
    with pytest.raises(BenchError, match=r"s.toml: unknown key 'foo' in the suite. Valid keys: allow_random_weights, "):
        load_suite(path)
    path = write(tmp_path, MINIMAL.replace("resolutions = [64]", "resolutions = [64]\nresolution = 3"))
    with pytest.raises(BenchError, match=r"unknown key 'resolution' in \[\[grid\]\] #1; did you mean 'resolutions'\?"):
        load_suite(path)


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(BenchError, match=r"'resolutions' in \[\[grid\]\] #1 must be a non-empty list of positive integers"):
        load_suite(write(tmp_path, MINIMAL.replace("[64]", '["big"]')))
    with pytest.raises(BenchError, match=r"'version' in the suite must be a positive integer"):
        load_suite(write(tmp_path, MINIMAL.replace("version = 1", 'version = "1"')))
    with pytest.raises(BenchError, match=r"'protocol' in the suite must be one of strict, paper"):
        load_suite(write(tmp_path, 'protocol = "fair"\n' + MINIMAL))


def test_invalid_toml_is_one_sentence(tmp_path):
    with pytest.raises(BenchError, match=r"is not valid TOML"):
        load_suite(write(tmp_path, "name = \n"))


def test_unknown_method_suggests_the_close_name(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace('"padim"', '"padm"')))
    with pytest.raises(BenchError, match=r"Unknown method 'padm' in suite s.toml; did you mean 'padim'\? Valid methods: "):
        check_suite(suite)


def test_unknown_suite_lists_valid_ones():
    with pytest.raises(BenchError, match=r"Unknown suite 'smok'; did you mean 'smoke'\?"):
        load_suite("smok")


def test_extends_overrides_top_level_keys(tmp_path):
    write(tmp_path, MINIMAL, "base.toml")
    child = load_suite(write(tmp_path, 'extends = "base.toml"\nname = "child"\nseeds = [1, 2]\n', "child.toml"))
    assert child.name == "child" and child.seeds == (1, 2) and child.grid[0].methods == ("padim",)


def test_metrics_bootstrap_and_reference_row_keys(tmp_path):
    suite = load_suite(write(tmp_path, 'metrics = ["image_ap", "aupro@0.05", "aupimo"]\n'
                                       'compare_to = { method = "padim", encoder = "resnet18" }\n'
                                       + MINIMAL + "[bootstrap]\nresamples = 500\nseed = 3\n"))
    check_suite(suite)
    assert suite.metrics == ("image_ap", "aupro@0.05", "aupimo")
    assert (suite.bootstrap.resamples, suite.bootstrap.seed, suite.bootstrap.confidence) == (500, 3, 0.95)
    assert suite.compare_to.method == "padim" and suite.compare_to.matches("padim", "resnet18.a1_in1k", {})
    defaults = load_suite(write(tmp_path, MINIMAL, "d.toml"))
    assert defaults.metrics == ("image_auroc", "pixel_auroc", "aupro") and defaults.bootstrap.resamples == 1000
    assert defaults.compare_to is None


def test_bad_metrics_bootstrap_and_reference_row_are_one_sentence(tmp_path):
    with pytest.raises(BenchError, match=r"Unknown metric 'aupro@3' in suite s.toml \(metrics\)"):
        check_suite(load_suite(write(tmp_path, 'metrics = ["aupro@3"]\n' + MINIMAL)))
    with pytest.raises(BenchError, match=r"\[bootstrap\]: resamples must be 0 \(no intervals\) or at least 100"):
        load_suite(write(tmp_path, MINIMAL + "[bootstrap]\nresamples = 10\n"))
    with pytest.raises(BenchError, match=r"compare_to names spade with resnet18, which no \[\[grid\]\] has"):
        load_suite(write(tmp_path, 'compare_to = { method = "spade", encoder = "resnet18" }\n' + MINIMAL))
    with pytest.raises(BenchError, match=r"unknown key 'model' in \[compare_to\]"):
        load_suite(write(tmp_path, 'compare_to = { model = "padim" }\n' + MINIMAL))
def test_defaults_come_from_the_schema(tmp_path):
    """A key left out takes the dataclass field's default: there is no second list of defaults to drift."""
    suite = load_suite(write(tmp_path, MINIMAL))
    assert (suite.batch_size, suite.seeds, suite.protocol, suite.feature_cache_mb) == (16, (0,), "strict", 4096)
    assert suite.measure == MeasureSpec() and suite.dataset.classes is None and suite.grid[0].resize is None
    assert sorted(suite_keys(GridBlock)) == ["class_resolutions", "classes", "encoders", "measure_only", "methods",
                                             "params", "resize", "resolutions"]


@pytest.mark.parametrize("change, message", [
    (("version = 1", "version = 1\nbatch_size = 0"), r"'batch_size' in the suite must be a positive integer, got 0"),
    (("resolutions = [64]", "resolutions = [64]\nresize = -1"), r"'resize' in \[\[grid\]\] #1 must be a positive"),
    (("resolutions = [64]", "resolutions = [64]\nresize = 32"),
     r"\[\[grid\]\] #1: resize 32 is smaller than the resolution 64; the centre crop must fit"),
    (("resolutions = [64]", "resolutions = [64]\nclass_resolutions = { a = 0 }"),
     r"'class_resolutions' in \[\[grid\]\] #1 must be a table of name = positive integer"),
    (("[dataset]", "feature_cache_mb = -1\n[dataset]"), r"'feature_cache_mb' in the suite must be a non-negative"),
    (("[dataset]", "[measure]\niterations = 0\n[dataset]"), r"'iterations' in \[measure\] must be a positive"),
    (("[dataset]", 'changelog = [1]\n[dataset]'), r"'changelog' in the suite must be a list of strings"),
    (('name = "synthetic"', 'name = "synthetic"\nclasses = "some"'),
     r"'classes' in \[dataset\] must be a list of class names or \"all\""),
    (("[[grid]]", "[[reference]]\nmethod = 'padim'\n[[grid]]"), r"\[\[reference\]\] #1 needs the key 'encoder'"),
])
def test_limits_and_rules_are_checked_when_loading(tmp_path, change, message):
    text = MINIMAL.replace(*change)
    assert text != MINIMAL
    with pytest.raises(BenchError, match=message):
        load_suite(write(tmp_path, text))


@pytest.mark.parametrize("params, message", [
    ("{ meta_epoch = 3 }", r"method 'cflow' has no parameter 'meta_epoch'; did you mean 'meta_epochs'\? Its parameters: "),
    ("{ seed = 3 }", r"params sets 'seed', which comes from the suite's seeds"),
    ("{ protocol = 'paper' }", r"params sets 'protocol', which comes from the suite's protocol"),
])
def test_method_params_are_checked_against_the_constructor(tmp_path, params, message):
    suite = load_suite(write(tmp_path, MINIMAL.replace('"padim"', '"cflow"') + f"params = {params}\n"))
    with pytest.raises(BenchError, match=r"s.toml, \[\[grid\]\] #1: " + message):
        check_suite(suite)


def test_a_resolution_below_the_deepest_stride_is_refused(tmp_path):
    """ResNet-18 at PaDiM's levels 1-3: level 3 has stride 16, so 16 px is the smallest useful input."""
    check_suite(load_suite(write(tmp_path, MINIMAL.replace("[64]", "[16]"))))
    with pytest.raises(BenchError, match=r"resolution 8 is below 16 px, the smallest useful input of resnet18 for "
                                         r"padim \(the stride of level 3, the deepest it taps\)"):
        check_suite(load_suite(write(tmp_path, MINIMAL.replace("[64]", "[8]"))))


def test_an_input_too_small_for_reflection_padding_is_refused_before_any_work(tmp_path):
    """CFLOW-AD pads its ResNets by reflection (the official code's copy): ResNet-18's layer 4 is 1 px wide at
    32 px, where reflection is undefined, so that size fails in validation, not in the middle of a run."""
    cflow = MINIMAL.replace('"padim"', '"cflow"')
    check_suite(load_suite(write(tmp_path, cflow.replace("[64]", "[36]"))))
    with pytest.raises(BenchError, match=r"resolution 32 is too small for resnet18 padded by reflect as cflow builds "
                                         r"it .*use at least 33, or encoder_padding = \"zeros\" in params"):
        check_suite(load_suite(write(tmp_path, cflow.replace("[64]", "[32]"))))
    check_suite(load_suite(write(tmp_path, cflow.replace("[64]", "[32]") + 'params = { encoder_padding = "zeros" }\n')))
