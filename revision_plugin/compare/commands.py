"""``revision compare`` command: result folders → table, or ``--pending`` for a suite config."""

from __future__ import annotations

import argparse
from pathlib import Path

from revision_plugin.compare.benchmarks import DEFAULT_MME, DEFAULT_MMMU, MME_CHOICES
from revision_plugin.compare.cost import (
    PAPER_PRICE_IN,
    PAPER_PRICE_OUT,
    TokenCount,
    count_training_tokens,
    parse_token_amount,
)
from revision_plugin.compare.runs import Run, load_run, unique_labels
from revision_plugin.compare.suite import MMMU_VARIANTS
from revision_plugin.compare.table import check_out_path, compare
from revision_plugin.errors import BadInputError, MissingFileError, RevisionError


def _entry_checkpoint(entry: dict, source: Path, index: int) -> Path:
    from revision_plugin.lmms.args import parse_model_args, resolve_checkpoint

    pretrained = parse_model_args(str(entry.get("model_args") or "")).get("pretrained")
    try:
        return resolve_checkpoint(pretrained)
    except (RevisionError, FileNotFoundError) as err:
        raise RevisionError(f"{source}: entry {index}: cannot check which checkpoint its results belong to ({err})") from err


def pending_entries(config: str | Path, output_path: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Split an lmms-eval ``--config`` file into (done, pending) entries.

    An entry is done when its ``output_path`` (or ``output_path`` given here, as on lmms-eval's
    command line) holds a results file with every task it names, run without ``--limit``,
    whose recorded checkpoint fingerprint is the fingerprint of the entry's ``pretrained=``
    checkpoint now (results without a fingerprint, e.g. from the plain ``lmms-eval`` command,
    cannot be attributed and stay pending). Lets a crashed or interrupted suite resume without
    re-running finished benchmarks.
    """
    import yaml

    from revision_plugin.lmms.provenance import checkpoint_fingerprint

    path = Path(config)
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise BadInputError(f"{path}: not a readable lmms-eval config ({err})") from err
    entries = [entries] if isinstance(entries, dict) else entries
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BadInputError(f"{path}: expected a mapping or a list of mappings (lmms-eval --config format)")
    runs: dict[str, Run | None] = {}
    fingerprints: dict[Path, str] = {}
    done, pending = [], []
    for index, entry in enumerate(entries):
        out = str(output_path or entry.get("output_path") or "")
        tasks = [t.strip() for t in str(entry.get("tasks") or "").split(",") if t.strip()]
        if not out or not tasks:
            raise BadInputError(f"{path}: entry {index} needs 'tasks' and 'output_path' (or pass --output-path)")
        if out not in runs:
            try:
                runs[out] = load_run(out, check_checkpoint=False)
            except (FileNotFoundError, RevisionError):
                runs[out] = None
        run = runs[out]
        finished = run is not None and all(t in run.results and run.source[t] not in run.limits for t in tasks)
        if finished:
            ckpt = _entry_checkpoint(entry, path, index)
            if ckpt not in fingerprints:
                fingerprints[ckpt] = checkpoint_fingerprint(ckpt)
            finished = all((run.task_provenance(t).get("checkpoint") or {}).get("fingerprint") == fingerprints[ckpt]
                           for t in tasks)
        (done if finished else pending).append(entry)
    return done, pending


DESCRIPTION = """\
The paper's comparison table (Tables 1-4: 11 benchmarks as accuracy %, Avg, optional Cost)
from lmms-eval result folders, one RUN per method. Prints the table as markdown, with
details and provenance below it; --out also writes it as .md, .csv, .json or .png."""

EPILOG = """\
examples:
  revision compare eval_out/realign eval_out/c3 --label ReAlign --label C3 --out table.md --out table.json
  revision compare eval_out/revision eval_out/w_image --label ReVision --label 'w/ Image' \\
      --tokens ReVision=11.64M,16.15M --tokens 'w/ Image=251.64M,16.15M' --cost-baseline 'w/ Image'
  revision compare --pending eval/runs/full.yaml --write-config rest.yaml

A benchmark a run did not evaluate is shown as "–" (never 0); the Avg of such a run is the
mean over the benchmarks it has, with the count, e.g. "47.20 (9/11)". A value read from a
--limit result is marked † (not a full evaluation; named under the table, "limited" in .csv/.json).
Exit status 2 on bad input (unreadable results, a folder mixing checkpoints, --require-all gaps)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help="lmms-eval output folder (searched recursively for *_results.json) or one results "
                             "file; one per method, a row each (not with --pending)")
    parser.add_argument("--label", action="append", default=None, metavar="NAME",
                        help="method name of a RUN; give it once per RUN, in the same order (default: the "
                             "folder name)")
    parser.add_argument("--out", action="append", type=Path, default=[], metavar="FILE",
                        help="also write the table to FILE, format from its suffix: .md, .csv, .json or .png "
                             "(repeatable; checked before any run is read)")
    parser.add_argument("--require-all", action="store_true",
                        help="exit with status 2 (after printing/writing the table) if any run misses any of "
                             "the 11 benchmarks, or has one only from a --limit result (marked †)")
    parser.add_argument("--decimals", type=int, default=2, metavar="N",
                        help="digits after the decimal point in the printed/markdown table (default 2; .csv "
                             "and .json keep full precision)")
    parser.add_argument("--mme", choices=sorted(MME_CHOICES), default=DEFAULT_MME,
                        help="what the MME column is: " + "; ".join(f"{k} = {v}" for k, v in MME_CHOICES.items())
                             + f" (default {DEFAULT_MME}; see eval/README.md)")
    parser.add_argument("--mmmu", choices=sorted(MMMU_VARIANTS), default=DEFAULT_MMMU,
                        help="MMMU/MMMU-Pro variant the columns use: standard = lmms-eval's mmmu_val / "
                             "mmmu_pro_standard, single = one merged image per question; a run without the chosen "
                             f"variant falls back to the other, with a note (default {DEFAULT_MMMU})")
    resume = parser.add_argument_group("resume a suite (instead of a table)")
    resume.add_argument("--pending", type=Path, metavar="CONFIG",
                        help="list the entries of an lmms-eval --config file whose results are not there yet "
                             "(done = every task, no --limit, same checkpoint fingerprint)")
    resume.add_argument("--output-path", default=None, metavar="DIR",
                        help="with --pending: the --output_path given to lmms-eval, when it overrode the "
                             "entries' own output_path")
    resume.add_argument("--write-config", type=Path, default=None, metavar="FILE",
                        help="with --pending: write the unfinished entries as a new --config file")
    cost = parser.add_argument_group("cost column (paper app. H.4; needs --cost-baseline)")
    cost.add_argument("--tokens", action="append", default=[], metavar="LABEL=IN,OUT",
                      help="data-acquisition input,output token counts of a method (K/M/B suffixes), e.g. "
                           "'ReVision=11.64M,16.15M' (repeatable)")
    cost.add_argument("--train-json", action="append", default=[], metavar="LABEL=FILE[,FILE]",
                      help="count the tokens of a method's training json(s) (LLaVA format) with --tokenizer "
                           "(repeatable)")
    cost.add_argument("--tokenizer", default=None, metavar="NAME_OR_DIR",
                      help="tokenizer (folder or hub id) of the model, for --train-json")
    cost.add_argument("--image-tokens", type=int, default=0, metavar="N",
                      help="input tokens charged per <image> in --train-json (default 0)")
    cost.add_argument("--price-in", type=float, default=PAPER_PRICE_IN, metavar="USD",
                      help=f"USD per million input tokens (default {PAPER_PRICE_IN:.2f})")
    cost.add_argument("--price-out", type=float, default=PAPER_PRICE_OUT, metavar="USD",
                      help=f"USD per million output tokens (default {PAPER_PRICE_OUT:.2f})")
    cost.add_argument("--cost-baseline", default=None, metavar="LABEL",
                      help="method whose cost is 1.00, the others relative to it (the paired 'w/ image' run)")


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    label, sep, value = text.rpartition("=")
    if not sep or not label or not value:
        raise RevisionError(f"{option} {text!r}: expected LABEL=VALUE")
    return label, value


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _run_pending(args: argparse.Namespace) -> int:
    import yaml

    done, pending = pending_entries(args.pending, args.output_path)
    print(f"{args.pending}: {len(done)} entries finished, {len(pending)} to run")
    for entry in pending:
        print(f"  pending: {entry.get('tasks')} -> {args.output_path or entry.get('output_path')}")
    if args.write_config is not None:
        args.write_config.parent.mkdir(parents=True, exist_ok=True)
        args.write_config.write_text(yaml.safe_dump(pending, sort_keys=False, width=200) if pending else "[]\n",
                                     encoding="utf-8")
        print(f"wrote {args.write_config}" + ("" if pending else " (nothing left to run)"))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pending is not None:
        if args.runs:
            raise RevisionError("--pending takes a config file, not RUN folders")
        return _run_pending(args)
    if not args.runs:
        raise RevisionError("give at least one RUN folder (or --pending CONFIG)")
    if args.label is not None and len(args.label) != len(args.runs):
        raise RevisionError(f"--label given {len(args.label)} times for {len(args.runs)} runs")
    if args.decimals < 0:
        raise RevisionError(f"--decimals {args.decimals}: give 0 or more digits")
    for out in args.out:  # a bad --out fails now, not after the table was printed
        check_out_path(out)
    labels = args.label or unique_labels(args.runs)
    runs = [load_run(path, label) for path, label in zip(args.runs, labels)]

    tokens: dict[str, TokenCount] = {}
    for item in args.tokens:
        label, value = _split_assignment(item, "--tokens")
        parts = value.split(",")
        if len(parts) != 2:
            raise RevisionError(f"--tokens {item!r}: expected LABEL=IN,OUT")
        tokens[label] = TokenCount(parse_token_amount(parts[0]), parse_token_amount(parts[1]), origin="--tokens")
    if args.train_json:
        if not args.tokenizer:
            raise RevisionError("--train-json needs --tokenizer (the model's tokenizer)")
        tokenizer = _load_tokenizer(args.tokenizer)
        for item in args.train_json:
            label, value = _split_assignment(item, "--train-json")
            paths = [Path(p) for p in value.split(",")]
            for p in paths:
                if not p.is_file():
                    raise MissingFileError(f"--train-json {label}: no such file: {p}")
            if label in tokens:
                raise RevisionError(f"{label}: both --tokens and --train-json given")
            tokens[label] = count_training_tokens(paths, tokenizer, image_tokens=args.image_tokens)

    table = compare(runs, tokens=tokens, cost_baseline=args.cost_baseline, price_in=args.price_in,
                    price_out=args.price_out, decimals=args.decimals,
                    mme=args.mme, mmmu=args.mmmu)
    print(table.to_markdown())
    for out in args.out:
        table.write(out)
        print(f"wrote {out}")
    if args.require_all:
        gaps = {row.label: [k for k, v in row.values.items() if v is None]
                + [f"{k} (ran with --limit {row.limited[k]})" for k in row.limited] for row in table.rows}
        gaps = {k: v for k, v in gaps.items() if v}
        if gaps:
            raise RevisionError("missing benchmarks: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in gaps.items()))
    return 0
