import pytest
from anobench.core import BenchError
from anobench.runner import check_names
from anobench.suites import available_suites, load_suite

BUILTIN = sorted(available_suites())


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_suites_load_and_name_only_known_things(name):
    suite = load_suite(name)
    check_names(suite)
    assert suite.name == name and suite.version >= 1 and suite.description


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
    with pytest.raises(BenchError, match=r"s.toml: unknown key 'foo' in the suite; valid keys: "):
        load_suite(path)
    path = write(tmp_path, MINIMAL.replace("resolutions = [64]", "resolutions = [64]\nresolution = 3"))
    with pytest.raises(BenchError, match=r"unknown key 'resolution' in \[\[grid\]\] #1"):
        load_suite(path)


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(BenchError, match=r"'resolutions' in \[\[grid\]\] #1 must be a non-empty list of positive integers"):
        load_suite(write(tmp_path, MINIMAL.replace("[64]", '["big"]')))
    with pytest.raises(BenchError, match=r"'version' in the suite must be an integer"):
        load_suite(write(tmp_path, MINIMAL.replace("version = 1", 'version = "1"')))
    with pytest.raises(BenchError, match=r"'protocol' in the suite must be one of strict, paper"):
        load_suite(write(tmp_path, 'protocol = "fair"\n' + MINIMAL))


def test_invalid_toml_is_one_sentence(tmp_path):
    with pytest.raises(BenchError, match=r"is not valid TOML"):
        load_suite(write(tmp_path, "name = \n"))


def test_unknown_method_suggests_the_close_name(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace('"padim"', '"padm"')))
    with pytest.raises(BenchError, match=r"Unknown method 'padm' in suite s.toml; did you mean 'padim'\? Valid methods: "):
        check_names(suite)


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
    check_names(suite)
    assert suite.metrics == ("image_ap", "aupro@0.05", "aupimo")
    assert (suite.bootstrap.resamples, suite.bootstrap.seed, suite.bootstrap.confidence) == (500, 3, 0.95)
    assert suite.compare_to.method == "padim" and suite.compare_to.matches("padim", "resnet18.a1_in1k", {})
    defaults = load_suite(write(tmp_path, MINIMAL, "d.toml"))
    assert defaults.metrics == ("image_auroc", "pixel_auroc", "aupro") and defaults.bootstrap.resamples == 1000
    assert defaults.compare_to is None


def test_bad_metrics_bootstrap_and_reference_row_are_one_sentence(tmp_path):
    with pytest.raises(BenchError, match=r"Unknown metric 'aupro@3' in suite s.toml \(metrics\)"):
        check_names(load_suite(write(tmp_path, 'metrics = ["aupro@3"]\n' + MINIMAL)))
    with pytest.raises(BenchError, match=r"'resamples' in \[bootstrap\] must be 0 \(no intervals\) or at least 100"):
        load_suite(write(tmp_path, MINIMAL + "[bootstrap]\nresamples = 10\n"))
    with pytest.raises(BenchError, match=r"'method' in compare_to must be a method and encoder of the suite's grid"):
        load_suite(write(tmp_path, 'compare_to = { method = "spade", encoder = "resnet18" }\n' + MINIMAL))
    with pytest.raises(BenchError, match=r"unknown key 'model' in compare_to"):
        load_suite(write(tmp_path, 'compare_to = { model = "padim" }\n' + MINIMAL))
