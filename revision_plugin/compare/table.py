"""The comparison table: one row per run, rendered as markdown, csv, json or png.

Missing benchmarks are shown as missing ("–"), never as 0. **Avg** is the plain mean of the
11 accuracies, as in the paper; a run missing any of them gets no Avg in the ``avg`` field,
and the table shows the mean over what is present followed by the coverage, e.g.
``47.20 (9/11)``. Below the table: details (MME halves and readings, SQA dev/test, POPE
splits, HallBench) and provenance (versions, checkpoint fingerprint, tower, template, judge,
empty answers, ``--limit`` runs, superseded files; see :mod:`.provenance`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from revision_plugin.compare.benchmarks import (
    BENCHMARK_KEYS,
    BENCHMARKS,
    DEFAULT_MME,
    DEFAULT_MMMU,
    GROUPS,
    MME_CHOICES,
    Benchmark,
    benchmarks,
    detail_columns,
)
from revision_plugin.compare.cost import PAPER_PRICE_IN, PAPER_PRICE_OUT, TokenCount
from revision_plugin.compare.provenance import grouped_warnings, json_provenance, provenance_lines
from revision_plugin.compare.runs import Run
from revision_plugin.errors import RevisionError

MISSING = "–"
LIMITED = "†"  # marks a cell read from a --limit result: not a full evaluation


# --out suffix -> format; checked before any run is read (check_out_path)
OUT_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".json": "json", ".png": "png"}


def check_out_path(path: Path) -> None:
    """Refuse an ``--out`` that :meth:`Comparison.write` could not write, before any work."""
    if path.suffix.lower() not in OUT_FORMATS:
        raise RevisionError(f"--out {path}: unknown format {path.suffix or '(no suffix)'!r} "
                            "(use .md, .csv, .json or .png)")
    if path.is_dir():
        raise RevisionError(f"--out {path}: is a directory; give a file name")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RevisionError(f"--out {path}: {blocking} is a file, not a directory")


@dataclass
class Row:
    label: str
    path: str
    values: dict[str, float | None]
    notes: list[str]
    details: dict[str, float | None]
    cost: float | None = None
    cost_dollars: float | None = None
    tokens: TokenCount | None = None
    limited: dict[str, object] = field(default_factory=dict)  # benchmark -> the --limit of a result it read

    @property
    def present(self) -> list[float]:
        return [v for v in self.values.values() if v is not None]

    @property
    def avg(self) -> float | None:
        """Mean of all 11 accuracies; None unless every benchmark is present."""
        return sum(self.present) / len(BENCHMARKS) if len(self.present) == len(BENCHMARKS) else None

    @property
    def avg_present(self) -> float | None:
        return sum(self.present) / len(self.present) if self.present else None


@dataclass
class Comparison:
    rows: list[Row]
    runs: list[Run]
    cost_baseline: str | None = None
    price_in: float = PAPER_PRICE_IN
    price_out: float = PAPER_PRICE_OUT
    decimals: int = 2
    mme: str = DEFAULT_MME
    mmmu: str = DEFAULT_MMMU

    @property
    def has_cost(self) -> bool:
        return any(r.tokens is not None for r in self.rows)

    def fmt(self, value: float | None) -> str:
        return MISSING if value is None else f"{value:.{self.decimals}f}"

    def avg_cell(self, row: Row) -> str:
        if row.avg is not None:
            return self.fmt(row.avg)
        if row.avg_present is None:
            return MISSING
        return f"{self.fmt(row.avg_present)} ({len(row.present)}/{len(BENCHMARKS)})"

    # ---- markdown
    def to_markdown(self) -> str:
        keys = list(BENCHMARK_KEYS)
        group_cells = []
        for group in GROUPS:
            members = [b.key for b in BENCHMARKS if b.group == group]
            group_cells += [f"**{group}**"] + [""] * (len(members) - 1)
        extra = ["Avg. ↑"] + (["Cost ↓"] if self.has_cost else [])
        lines = [
            "| | " + " | ".join(group_cells) + " |" + " |" * len(extra),
            "|---|" + "---|" * (len(keys) + len(extra)),
            "| **Method** | " + " | ".join(f"**{k}**" for k in keys) + " | " + " | ".join(f"**{e}**" for e in extra) + " |",
        ]
        for row in self.rows:
            cells = [self.fmt(row.values[k]) + (LIMITED if k in row.limited else "") for k in keys] + [self.avg_cell(row)]
            if self.has_cost:
                cells.append(self.fmt(row.cost))
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        out = ["\n".join(lines), ""]
        notes = self._footnotes()
        if notes:
            out += [f"- {n}" for n in notes] + [""]
        out += [self._details_markdown(), "", self._provenance_markdown()]
        return "\n".join(out).rstrip() + "\n"

    def _footnotes(self) -> list[str]:
        notes = []
        if any(r.avg is None and r.present for r in self.rows):
            notes.append(f"Avg. over the benchmarks present, with the count, when a run misses some; {MISSING} = not evaluated.")
        for row in self.rows:
            for note in row.notes:
                notes.append(f"{row.label}: {note}")
        if self.has_cost:
            notes.append(f"Cost: (P_in·T_in + P_out·T_out) with P_in=${self.price_in:g}, P_out=${self.price_out:g} per "
                         f"million tokens, normalised to {self.cost_baseline} (= 1.00); see the details below.")
        return notes

    def _details_markdown(self) -> str:
        cols = detail_columns()
        lines = ["Details (accuracy % unless a score):", "",
                 "| Method | " + " | ".join(c[0] for c in cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for row in self.rows:
            lines.append(f"| {row.label} | " + " | ".join(self.fmt(row.details[c[0]]) for c in cols) + " |")
        if self.has_cost:
            lines += ["", "| Method | input tokens | output tokens | cost ($) | relative | source |", "|---|---|---|---|---|---|"]
            for row in self.rows:
                if row.tokens is None:
                    lines.append(f"| {row.label} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | |")
                else:
                    t = row.tokens
                    lines.append(f"| {row.label} | {t.input_tokens / 1e6:.2f}M | {t.output_tokens / 1e6:.2f}M | "
                                 f"{row.cost_dollars:.2f} | {self.fmt(row.cost)} | {t.origin} |")
        return "\n".join(lines)

    def _provenance_markdown(self) -> str:
        lines = ["Provenance:", "", f"- MME column: {self.mme} = {MME_CHOICES[self.mme]}; MMMU variant: {self.mmmu}"]
        for run in self.runs:
            versions = sorted(set(run.versions.values()))
            lines.append(f"- {run.label}: `{run.path}` — {len(run.versions)} result file(s), "
                         f"lmms-eval {', '.join(versions)}")
            for depth, text in provenance_lines(run):
                lines.append("  " * (depth + 1) + f"- {text}")
            sources = set(run.source.values())
            for file, limit in run.limits.items():
                used = "" if file in sources else " (superseded: not in the table)"
                lines.append(f"  - WARNING `{file}` ran with --limit {limit}: not a full evaluation{used}")
            for task, file in run.superseded:
                lines.append(f"  - `{task}` in `{file}` superseded by a newer file")
        return "\n".join(lines)

    # ---- csv / json
    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        detail_names = [c[0] for c in detail_columns()]
        writer.writerow(["method", "run", *BENCHMARK_KEYS, "avg", "avg_present", "n_present",
                         "cost", "cost_usd", "input_tokens", "output_tokens", *detail_names, "lmms_eval_version",
                         "limited"])
        for row, run in zip(self.rows, self.runs):
            def num(v):
                return "" if v is None else repr(round(v, 6))
            writer.writerow([
                row.label, row.path, *(num(row.values[k]) for k in BENCHMARK_KEYS), num(row.avg), num(row.avg_present),
                len(row.present), num(row.cost), num(row.cost_dollars),
                num(row.tokens.input_tokens if row.tokens else None), num(row.tokens.output_tokens if row.tokens else None),
                *(num(row.details[n]) for n in detail_names), ";".join(sorted(set(run.versions.values()))),
                ";".join(f"{k}={v}" for k, v in row.limited.items()),
            ])
        return buf.getvalue()

    def to_json(self) -> dict:
        return {
            "benchmarks": [{"key": b.key, "group": b.group} for b in BENCHMARKS],
            "avg_policy": "mean of all 11 accuracies; null when any is missing (avg_present = mean over present ones)",
            "mme_column": {"choice": self.mme, "meaning": MME_CHOICES[self.mme]}, "mmmu_variant": self.mmmu,
            "price_in": self.price_in, "price_out": self.price_out, "cost_baseline": self.cost_baseline,
            "rows": [
                {"method": row.label, "run": row.path, "values": row.values, "avg": row.avg,
                 "avg_present": row.avg_present, "n_present": len(row.present), "cost": row.cost,
                 "cost_usd": row.cost_dollars, "details": row.details, "notes": row.notes, "limited": row.limited,
                 "tokens": None if row.tokens is None else {"input": row.tokens.input_tokens,
                                                           "output": row.tokens.output_tokens,
                                                           "origin": row.tokens.origin},
                 "lmms_eval_versions": sorted(set(run.versions.values())),
                 "provenance": json_provenance(run), "provenance_warnings": grouped_warnings(run),
                 "files": {task: str(f) for task, f in run.source.items()}}
                for row, run in zip(self.rows, self.runs)
            ],
        }

    # ---- chart
    def to_png(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = list(BENCHMARK_KEYS) + ["Avg"]
        n = max(len(self.rows), 1)
        width = 0.8 / n
        fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(keys)), 4.5))
        for i, row in enumerate(self.rows):
            values = [row.values[k] for k in BENCHMARK_KEYS] + [row.avg]
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(keys))]
            ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                   width=width, label=row.label)
            for x, v in zip(xs, values):
                if v is None:  # missing: a label, never a zero-height bar
                    ax.text(x, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def write(self, path: Path) -> None:
        check_out_path(path)
        kind = OUT_FORMATS[path.suffix.lower()]
        if kind == "png":
            self.to_png(path)
            return
        text = {"markdown": self.to_markdown, "csv": self.to_csv,
                "json": lambda: json.dumps(self.to_json(), indent=2, default=str) + "\n"}[kind]()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def build_row(run: Run, benches: tuple[Benchmark, ...] = BENCHMARKS) -> Row:
    values, notes, limited = {}, [], {}
    limited_tasks = run.limited_tasks()
    for bench in benches:
        value, source = bench.value(run)
        values[bench.key] = value
        if source is not None and source.note:
            notes.append(source.note)
        limits = sorted({str(limited_tasks[t]) for t, _ in (source.metrics if source else ()) if t in limited_tasks})
        if limits:
            limited[bench.key] = ",".join(limits)
    details = {name: read(run) for name, read, _ in detail_columns()}
    if limited_tasks:
        what = ", ".join(f"{k} (--limit {v})" for k, v in limited.items()) or ", ".join(limited_tasks)
        notes.append(f"{LIMITED} {what} ran with --limit: not full evaluations, not comparable to full runs "
                     "(see provenance)")
    return Row(label=run.label, path=str(run.path), values=values, notes=notes, details=details, limited=limited)


def compare(runs: list[Run], *, tokens: dict[str, TokenCount] | None = None, cost_baseline: str | None = None,
            price_in: float = PAPER_PRICE_IN, price_out: float = PAPER_PRICE_OUT, decimals: int = 2,
            mme: str = DEFAULT_MME, mmmu: str = DEFAULT_MMMU) -> Comparison:
    """Rows for ``runs`` (in order) plus the optional relative cost."""
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise RevisionError(f"duplicate method labels: {labels}")
    benches = benchmarks(mme, mmmu)
    rows = [build_row(run, benches) for run in runs]
    tokens = tokens or {}
    unknown = sorted(set(tokens) - set(labels))
    if unknown:
        raise RevisionError(f"token counts given for unknown methods {unknown}; methods are {labels}")
    if tokens:
        if cost_baseline is None:
            raise RevisionError("--cost-baseline LABEL is required with token counts (the paired 'w/ image' run)")
        if cost_baseline not in tokens:
            raise RevisionError(f"cost baseline {cost_baseline!r} has no token counts; give --tokens or --train-json for it")
        base = tokens[cost_baseline].dollars(price_in, price_out)
        if base <= 0:
            raise RevisionError(f"cost baseline {cost_baseline!r} costs $0; cannot normalise")
        for row in rows:
            if row.label in tokens:
                row.tokens = tokens[row.label]
                row.cost_dollars = row.tokens.dollars(price_in, price_out)
                row.cost = row.cost_dollars / base
    return Comparison(rows=rows, runs=runs, cost_baseline=cost_baseline, price_in=price_in,
                      price_out=price_out, decimals=decimals, mme=mme, mmmu=mmmu)
