"""``revision demo``: the miniature ReVision study (the main job), or ``--geometry-only`` the
synthetic-vector geometry demo.

Writes under ``--out`` (default ``demo_out/``): ``settings.json``, ``seed-K/`` (world, tiny
models, embeddings, operators, geometry report, every checkpoint and lmms-eval result, and
``table_stage{1,2}.{md,csv,png,json}``: ``revision compare`` of that seed's eval folders),
``study_table.{md,csv,json}`` (every variant, both stages: mean, std and per-seed values over
seeds), ``summary.md`` (two sentences of result, then why) and ``timings.json``. A rerun reuses
every finished step.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from revision_plugin.errors import BadInputError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from revision_plugin.geometry import commands_demo as demo

    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--quick", action="store_true",
                        help="one seed and a smaller evaluation: what the test suite runs (~3 min)")
    parser.add_argument("--large", action="store_true",
                        help="the larger world (more scenes, a 4-layer Llama); at this scale the tiny Llama does not yet "
                             "learn to read the image within its pretraining budget, so its table is noise (~17 min)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="repeat the whole study over N world/model seeds (mean ± std); default 3 (1 with --quick)")
    parser.add_argument("--ablation-tokens", action="store_true",
                        help="also run ReAlign with num_tokens=576 (the official code's replication) vs the default 1")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 2, the settings' value). A run is reproducible for one thread "
                             "count; another count changes float reductions, hence the trained models and their scores")
    parser.add_argument("--force", action="store_true", help="redo every step instead of reusing cached ones")
    parser.add_argument("--geometry-only", action="store_true",
                        help="the synthetic-vector geometry demo instead (gap table of every operator + report)")
    geometry = parser.add_argument_group("--geometry-only options (see revision_plugin.geometry.commands_demo)")
    for action in demo_options(demo):
        geometry._add_action(action)


def demo_options(demo) -> list:
    """The synthetic demo's own options, except --out (shared)."""
    scratch = argparse.ArgumentParser(add_help=False)
    demo.add_arguments(scratch)
    return [a for a in scratch._actions if "--out" not in a.option_strings]


def run(args: argparse.Namespace) -> int:
    if args.geometry_only:
        from revision_plugin.geometry import commands_demo as demo

        return demo.run(args)
    import torch

    from revision_plugin.study import summary
    from revision_plugin.study.pipeline import Runner
    from revision_plugin.study.settings import default_settings, large_settings, quick_settings
    from revision_plugin.study.study import run_seed

    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise BadInputError(f"--seeds must be >= 1, got {seeds}")
    if args.quick and args.large:
        raise BadInputError("--quick and --large are exclusive")
    preset = "large" if args.large else "quick" if args.quick else "default"
    settings = {"large": large_settings, "quick": quick_settings, "default": default_settings}[preset]()
    threads = args.threads or settings.threads
    settings = replace(settings, threads=threads)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps({"preset": preset, "seeds": seeds,
                                                   **settings.to_json()}, indent=1) + "\n")
    runner = Runner(force=args.force)
    per_seed = []
    for seed in range(seeds):
        per_seed.append(run_seed(out / f"seed-{seed}", settings.with_seed(seed), runner,
                                 ablation_tokens=args.ablation_tokens))
    table = summary.write_outputs(out, per_seed, settings, runner)
    total = time.perf_counter() - started
    steps = runner.timings()
    (out / "timings.json").write_text(json.dumps({
        "this_run_seconds": round(total, 1), "cached_steps": sum(s["cached"] for s in steps),
        "study_seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps}, indent=1) + "\n")
    print(table)
    print((out / "summary.md").read_text())
    print(f"study finished in {total:.1f} s ({sum(r.cached for r in runner.results)}/{len(runner.results)} steps "
          f"cached); outputs in {out}")
    return 0
