"""Methods from other packages: entry points and "package.module:Class" names, as a researcher's plugin
would use them, including plugins that are broken."""

import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_bench, write_suite
from tests.test_cli import assert_one_sentence
from tests.test_reports import md_rows
from tests.test_table6 import TABLE6

PLUGIN_MODULE = '''
from anobench.methods.padim import PaDiM


class TinyPaDiM(PaDiM):
    """A PaDiM with few channels, shipped by a third-party package."""

    name = "tiny_padim"
    display_name = "TinyPaDiM"

    def __init__(self, *, encoder="resnet18", weights="imagenet", d_reduced=20, seed=0, device="cpu"):
        super().__init__(encoder=encoder, weights=weights, d_reduced=d_reduced, seed=seed, device=device)


class NotAMethod:
    pass
'''


def install_fake_distribution(site: os.PathLike, name: str, entry_points: dict[str, str]) -> None:
    """A distribution as pip leaves it (a dist-info folder with entry points) on a path we add to PYTHONPATH."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[anobench.methods]\n{lines}\n")


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "thirdparty_methods.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    return site


def bench(site, *args):
    return run_bench(*args, env={"PYTHONPATH": str(site)})


def test_an_entry_point_plugin_is_listed_with_its_origin_and_runs_beside_padim(site, tiny_data, tmp_path):
    install_fake_distribution(site, "thirdparty-methods", {"tiny_padim": "thirdparty_methods:TinyPaDiM"})
    listing = bench(site, "list", "methods")
    assert listing.returncode == 0
    assert any(line.split()[:3] == ["tiny_padim", "plugin", "thirdparty-methods"]
               for line in listing.stdout.splitlines()), listing.stdout
    suite = write_suite(tmp_path / "mine.toml", tiny_data, classes=("disc",), methods=("padim", "tiny_padim"))
    result = bench(site, "run", "--suite", str(suite), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    assert "TinyPaDiM-R18" in report and "PaDiM-R18" in report


def test_a_suite_may_name_a_class_by_module_path(site, tiny_data, tmp_path):
    suite = write_suite(tmp_path / "mine.toml", tiny_data, classes=("disc",),
                        methods=("thirdparty_methods:TinyPaDiM",))
    assert bench(site, "validate", str(suite)).returncode == 0
    result = bench(site, "validate", str(write_suite(tmp_path / "typo.toml", tiny_data,
                                                     methods=("thirdparty_methods:TinyPaDIM",))))
    assert_one_sentence(result, 2, "thirdparty_methods:TinyPaDIM", "cannot be imported", "AttributeError")


def test_a_plugin_that_cannot_be_imported_breaks_only_the_commands_that_need_it(site, tiny_data, tmp_path):
    install_fake_distribution(site, "broken-plugin", {"broken": "no_such_module:Method"})
    listing = bench(site, "list", "methods")
    assert listing.returncode == 0 and "padim" in listing.stdout
    assert "broken" in listing.stdout and "cannot be loaded" in listing.stdout
    suite = write_suite(tmp_path / "mine.toml", tiny_data, methods=("broken",))
    result = bench(site, "run", "--suite", str(suite), "--out", str(tmp_path / "run"))
    assert_one_sentence(result, 2, "method 'broken' (plugin broken-plugin 0.1)", "no_such_module")
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_a_plugin_that_is_not_a_method_is_refused(site, tiny_data, tmp_path):
    install_fake_distribution(site, "odd-plugin", {"odd": "thirdparty_methods:NotAMethod"})
    suite = write_suite(tmp_path / "mine.toml", tiny_data, methods=("odd",))
    result = bench(site, "validate", str(suite))
    assert_one_sentence(result, 2, "method 'odd' (plugin odd-plugin 0.1) is not a subclass of", "AnomalyMethod")


def test_a_plugin_method_without_an_encoder_gets_its_table6_row(tiny_data, tmp_path):
    """The example plugin's ColourStats (no timm encoder) by its entry point: checked, run, and in Table 6 with
    fps, size and GFLOPs, no encoder columns and no encoder in its name, with no edit to anobench."""
    example = Path(__file__).resolve().parents[1] / "examples" / "anobench-diaggauss"
    site = tmp_path / "site"
    install_fake_distribution(site, "anobench-diaggauss", {"colour_stats": "anobench_diaggauss.colour_stats:ColourStats"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(example)])}
    checked = run_bench("check-method", "colour_stats", env=env)
    assert checked.returncode == 0 and "no encoder region" in checked.stdout, checked.stdout + checked.stderr
    suite = write_suite(tmp_path / "colour.toml", tiny_data, classes=("disc",), methods=("colour_stats",),
                        extra="[measure]\nspeed = true\nbatch_sizes = [2]\nwarmup = 0\niterations = 2\n")
    result = run_bench("run", "--suite", str(suite), "--out", str(tmp_path / "run"), env=env)
    assert result.returncode == 0, result.stderr
    header, rows = md_rows((tmp_path / "run" / "report.md").read_text(), TABLE6)
    row = dict(zip(header, rows[0], strict=True))
    assert row["Model"] == "ColourStats" and row["Status"] == "ok"
    assert float(row["fps"]) > 0 and float(row["Size MB"]) > 0 and float(row["GFLOPs"]) >= 0
    assert "Encoder fps" not in header and "fps / encoder fps" not in header
