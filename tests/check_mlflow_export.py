"""CI's check of `bench track`: the MLflow store at TRACKING_URI holds one run per cell of RUN_DIR, with the
records' numbers (read back with mlflow.search_runs into pandas).

    python tests/check_mlflow_export.py TRACKING_URI RUN_DIR
"""

import sys

import mlflow

import anobench
from anobench.track import metric_name


def main(tracking_uri: str, run_dir: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["anobench"]).set_index("tags.anobench.cell_id")
    cells = anobench.load_records(run_dir).set_index("cell_id")
    assert sorted(runs.index) == sorted(cells.index), (sorted(runs.index), sorted(cells.index))
    metrics = [c.removeprefix("metrics.") for c in cells if c.startswith("metrics.")]
    compared = 0
    for cell_id, record in cells.iterrows():
        for metric in metrics:
            value = record[f"metrics.{metric}"]
            if value == value:  # not NaN: measured
                assert abs(runs.loc[cell_id, f"metrics.{metric_name(metric)}"] - value) < 1e-12, (cell_id, metric)
                compared += 1
    assert compared, "no metric to compare"
    print(f"MLflow holds the {len(runs)} cells of {run_dir}: {compared} metric values equal to their records'")


if __name__ == "__main__":
    main(*sys.argv[1:])
