"""The complexity table (the paper's Table 6 layout): per model and input size, fps, latency, encoder fps,
GFLOPs and size from the cells that measured them, beside the paper's figures; and the rows the figures
draw from. A method's encoder-only row comes from the cells of any method that declares one
(``AnomalyMethod.encoder_row``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from anobench.aggregate import median_over_cells
from anobench.methods import method_presentation
from anobench.records import Record, SpeedRecord
from anobench.reports.rows import (
    RANDOM_WEIGHTS,
    RunData,
    Table,
    ambiguous_rows,
    base_encoder,
    declared_marks,
    find_reference,
    footnotes_for,
    method_display,
    resolutions,
    row_key,
    row_name,
    short_name,
)
from anobench.suites import Reference

ENCODER_ROW = "encoder"  # the method name of Table 6's encoder-only rows (as in suites' reference numbers)


def cell_fps(record: Record, region: str = "end_to_end") -> float | None:
    """One cell's fps: images / median time of ``region`` at the largest batch it measured."""
    speed = SpeedRecord.of(record)
    return speed.fps(region) if speed else None


def row_size_mb(method: str, record: Record) -> float:
    size = record["size"]
    return (size["breakdown_bytes"]["encoder"] if method == ENCODER_ROW else size["total_bytes"]) / 1e6


def cell_gflops(method: str, record: Record) -> float | None:
    """GFLOPs of one image: the encoder's for encoder-only rows, every component's for method rows (empty
    where the record has no count)."""
    flops = record.get("flops") or {}
    if method == ENCODER_ROW:
        value = (flops.get("components") or {}).get("encoder", {}).get("flops")
    else:
        value = flops.get("total_flops")
    return None if value is None else value / 1e9


@dataclass
class ModelRow:
    """One model (or an encoder timed alone) at one input size, and the cells that measured it."""

    method: str  # ENCODER_ROW for an encoder alone
    encoder: str  # base name, e.g. resnet18
    resolution: int | None
    name: str  # the tables' display name, with the marks that apply to it
    records: list[Record] = field(default_factory=list)

    @property
    def region(self) -> str:
        return "encoder" if self.method == ENCODER_ROW else "end_to_end"

    @property
    def label(self) -> str:
        """The name figures print: the table's name and the input size."""
        return f"{self.name} @{self.resolution}"

    def fps(self) -> float | None:
        return median_over_cells(cell_fps(r, self.region) for r in self.records)

    def encoder_fps(self) -> float | None:
        """The encoder timed alone in the same cells, at the levels the method taps (none for encoder-only
        rows)."""
        if self.method == ENCODER_ROW:
            return None
        return median_over_cells(cell_fps(r, "encoder") for r in self.records)

    def latency_ms(self) -> float | None:
        return median_over_cells(speed.latency_ms(self.region, batch=1) for speed in self.speeds())

    def size_mb(self) -> float | None:
        return median_over_cells(row_size_mb(self.method, r) for r in self.records if "size" in r)

    def gflops(self) -> float | None:
        return median_over_cells(cell_gflops(self.method, r) for r in self.records)

    def achieved_gflops_per_s(self) -> float | None:
        """Each cell's GFLOPs × its fps, the median over cells (a cell's work at that cell's speed)."""
        return median_over_cells(gflops * fps for r in self.records
                                 if (gflops := cell_gflops(self.method, r)) is not None
                                 and (fps := cell_fps(r, self.region)) is not None)

    def batch(self) -> str | None:
        batches = sorted({speed.largest.batch for speed in self.speeds()})
        return "/".join(map(str, batches)) or None

    def speeds(self) -> list[SpeedRecord]:
        """The speed measurements of the row's cells (cells without one left out)."""
        return [speed for speed in map(SpeedRecord.of, self.records) if speed is not None]


def model_rows(records: list[Record]) -> list[ModelRow]:
    """Rows as the accuracy tables group records (``row_key``), split by input size, then one encoder-only
    row per encoder and input from the cells of methods whose encoder region makes one (``encoder_row``:
    their encoder runs every level up to the last); an encoder row carries the marks that apply to an
    encoder (random weights, the methods' encoder marks), and cells whose encoders were built differently
    make different encoder rows."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    encoder_cells: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        c = record["config"]
        groups[(row_key(record), c["resolution"])].append(record)
        if encoder_row_text(c["method"]):
            marks = "".join(m.symbol for m in declared_marks(record, encoder_only=True))
            encoder_cells[(base_encoder(c["encoder"]), c["resolution"], c["weights"], marks)].append(record)
    ambiguous = ambiguous_rows(dict.fromkeys(key for key, _ in groups))
    rows = [ModelRow(key[0], base_encoder(key[1]), resolution, row_name(members, key in ambiguous), members)
            for (key, resolution), members in groups.items()]
    for (encoder, resolution, weights, marks), members in encoder_cells.items():
        name = f"{short_name(encoder)} encoder only{RANDOM_WEIGHTS if weights == 'random' else ''}{marks}"
        rows.append(ModelRow(ENCODER_ROW, encoder, resolution, name, members))
    return rows


def encoder_row_text(method: str) -> str:
    """How the method's class describes the encoder-only rows its cells make; empty for none."""
    presentation = method_presentation(method)
    return presentation.encoder_row if presentation else ""


def speed_rows(run: RunData) -> list[ModelRow]:
    """Table 6's measured rows: every row whose cells measured speed."""
    return model_rows([r for r in run.ok if "speed" in r])


def paper_rows(references: Iterable[Reference]) -> list[tuple[str, str, int | None]]:
    rows: list[tuple[str, str, int | None]] = []
    for ref in references:
        if ref.metric == "fps":
            key = (ref.method, base_encoder(ref.encoder), ref.resolution)
            if key not in rows:
                rows.append(key)
    return rows


def size_reference(references: Iterable[Reference], row: ModelRow) -> Reference | None:
    stc = any(r["config"]["dataset"] == "stc" for r in row.records)
    return find_reference(references, row.method, row.encoder, "size_mb_stc" if stc else "size_mb_mvtec")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


@dataclass(frozen=True)
class Column:
    """A Table 6 column: its header, decimals, and its value for a row beside the paper's figures for it."""

    header: str
    decimals: int | None
    value: Callable[[ModelRow, Reference | None, Reference | None], Any]  # (row, paper fps, paper size)


def _paper(ref: Reference | None) -> float | None:
    return ref.value if ref else None


COMPLEXITY_COLUMNS = (
    Column("Model", None, lambda row, fps, size: row.name),
    Column("Input", None, lambda row, fps, size: resolutions(row.records) if row.records else row.resolution),
    Column("Cells", None, lambda row, fps, size: len(row.records) or None),
    Column("Batch", None, lambda row, fps, size: row.batch()),
    Column("fps", 2, lambda row, fps, size: row.fps()),
    Column("fps (paper)", 1, lambda row, fps, size: _paper(fps)),
    Column("ours/paper", 3, lambda row, fps, size: ratio(row.fps(), _paper(fps))),
    Column("Latency b=1 (ms)", 1, lambda row, fps, size: row.latency_ms()),
    Column("Encoder fps", 2, lambda row, fps, size: row.encoder_fps()),
    Column("fps / encoder fps", 3, lambda row, fps, size: ratio(row.fps(), row.encoder_fps())),
    Column("GFLOPs", 2, lambda row, fps, size: row.gflops()),
    Column("GFLOP/s achieved", 1, lambda row, fps, size: row.achieved_gflops_per_s()),
    Column("Size MB", 1, lambda row, fps, size: row.size_mb()),
    Column("Size MB (paper)", 0, lambda row, fps, size: _paper(size)),
    Column("Size ours/paper", 3, lambda row, fps, size: ratio(row.size_mb(), _paper(size))),
)


def _status(row: ModelRow, run: RunData) -> str:
    if row.records:
        return "ok"
    failed = any((encoder_row_text(r["config"]["method"]) if row.method == ENCODER_ROW
                  else r["config"]["method"] == row.method) and base_encoder(r["config"]["encoder"]) == row.encoder
                 for r in run.failed)
    return "failed" if failed else "not run"


def drop_empty_columns(table: Table) -> Table:
    """Remove the columns no row has a value in."""
    keep = [i for i, _ in enumerate(table.columns) if any(row[i] not in (None, "") for row in table.rows)]
    table.columns = [table.columns[i] for i in keep]
    table.rows = [[row[i] for i in keep] for row in table.rows]
    return table


def encoder_rows_text(rows: list[ModelRow]) -> str:
    """What the encoder-only rows time, as the methods whose cells they come from declare it."""
    sources = dict.fromkeys(encoder_row_text(r["config"]["method"])
                            for row in rows if row.method == ENCODER_ROW for r in row.records)
    return f"Encoder-only rows time {'; '.join(sources)}. " if sources else ""


def complexity_table(run: RunData) -> Table | None:
    """Table 6 layout: fps and model size per model and input, ours beside the paper's, and ours/paper."""
    measured = speed_rows(run)
    if not measured:
        return None
    references = run.suite.references if run.suite else ()
    rows: list[ModelRow] = []
    for method, encoder, resolution in paper_rows(references):  # the paper's rows first, in its order
        matching = [r for r in measured if (r.method, r.encoder) == (method, encoder)
                    and resolution in (None, r.resolution)]
        if not matching:
            name = (f"{short_name(encoder)} encoder only" if method == ENCODER_ROW
                    else f"{method_display(method, run.records)}-{short_name(encoder)}")
            matching = [ModelRow(method, encoder, resolution, name)]
        rows += [r for r in matching if not any(r is seen for seen in rows)]
    rows += [r for r in measured if not any(r is seen for seen in rows)]
    columns = [c.header for c in COMPLEXITY_COLUMNS] + ["Status"]
    table = Table("complexity", "Complexity: inference speed and model size (Table 6 layout)", columns,
                  decimals={c.header: c.decimals for c in COMPLEXITY_COLUMNS if c.decimals is not None})
    for row in rows:
        fps_ref = find_reference(references, row.method, row.encoder, "fps", resolution=row.resolution)
        size_ref = size_reference(references, row)
        table.rows.append([c.value(row, fps_ref, size_ref) for c in COMPLEXITY_COLUMNS] + [_status(row, run)])
    records = [r for row in measured for r in row.records]
    datasets_seen = {r["config"]["dataset"] for r in records}
    devices = sorted({r["device"]["name"] for r in records})
    paper_size = "STC" if datasets_seen == {"stc"} else "MVTec AD"
    table.caption = (f"Measured on {', '.join(devices)}; the paper's figures are on a GTX 1080. A row's fps, "
                     "encoder fps, latency and size are the median over its cells (classes and seeds; "
                     "column Cells) of each cell's value. A cell's fps = images / median time of the "
                     "end-to-end region (network + post-processing, no data loading) at the largest batch "
                     "measured; encoder fps times the encoder alone in the same cells at the levels the "
                     "method taps; fps / encoder fps is the row's fps over its encoder fps. "
                     + encoder_rows_text(measured)
                     + ("GFLOPs: one image at the row's input (counter, or formula for distance computations; "
                        "see each record's 'flops'); achieved GFLOP/s: each cell's GFLOPs × fps. "
                        if any(row.gflops() is not None for row in measured) else "")
                     + "Size counts everything needed to score (MB = 10^6 bytes); the paper's size column is "
                     f"{paper_size}.")
    notes = footnotes_for(records)
    if any(r["device"]["requested"] == "cpu" for r in records):
        speeds = [speed for speed in map(SpeedRecord.of, records) if speed]
        threads = sorted({speed.torch_threads for speed in speeds if speed.torch_threads is not None})
        iterations = sorted({speed.iterations for speed in speeds if speed.iterations is not None})
        notes.append(f"CPU timings ({', '.join(map(str, threads))} torch threads, "
                     f"{', '.join(map(str, iterations))} timed iterations after "
                     "warm-up): not comparable with the paper's GPU figures; the fps / encoder fps ratio is.")
    table.footnotes = [n for n in notes if not n.startswith("Protocol")]
    return drop_empty_columns(table)
