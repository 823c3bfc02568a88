"""The operator interface, the method registry and the on-disk artifact.

An operator is a frozen ``torch.nn.Module`` (float64 buffers, no parameters) that maps
``[..., d]`` text embeddings into the image embedding distribution (``forward``) and says
what real images go through (``transform_image``; the identity on unit vectors for ReAlign,
eq. 24). Methods register themselves by lowercase name; a new method is one file.

Artifact: ``operator.safetensors`` (float64 buffers) + ``operator.json`` (method, dim,
counts, encoder id, fit-data fingerprint, options, package version). No pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from revision_plugin import __version__
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS, ChunkSource, open_source
from revision_plugin.align.stats import BadRows, MomentStats, accumulate, check_dim, normalized_blocks
from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError

logger = logging.getLogger(__name__)

OPERATOR_WEIGHTS_NAME = "operator.safetensors"
OPERATOR_CONFIG_NAME = "operator.json"
FORMAT_VERSION = 1
# Below this E‖e − μ‖² (of unit vectors, at most 1) rows are identical up to round-off.
MIN_TRACE = 1e-9

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
OPERATOR_REGISTRY: dict[str, type[Operator]] = {}


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator: register ``cls`` under ``cls.method`` (lowercase, unique)."""
    name = getattr(cls, "method", None)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(f"operator method name must be lowercase [a-z0-9_], got {name!r}")
    if name in OPERATOR_REGISTRY:
        raise ValueError(f"operator method {name!r} is already registered by {OPERATOR_REGISTRY[name].__name__}")
    if set(cls.option_specs) != set(cls.default_options):
        raise ValueError(
            f"operator {name!r}: option_specs {sorted(cls.option_specs)} must declare the type and range of "
            f"every default option {sorted(cls.default_options)}"
        )
    OPERATOR_REGISTRY[name] = cls
    return cls


def get_operator_class(method: str) -> type[Operator]:
    try:
        return OPERATOR_REGISTRY[method]
    except KeyError:
        known = ", ".join(sorted(OPERATOR_REGISTRY))
        raise ValueError(f"unknown operator method {method!r}; registered: {known}") from None


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


@dataclass(frozen=True)
class Opt:
    """Type and range of one method option, declared next to ``default_options``.

    ``kind``: ``int`` (a true integer, never a float or bool), ``float`` (finite; ints
    accepted) or ``bool``. ``low``/``high``: inclusive bounds (``low_open``: exclusive low).
    ``optional``: ``None`` is allowed (e.g. an unset seed).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "true or false"}[self.kind]
        if self.low is not None and self.high is not None:
            kind += f" in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        elif self.low is not None:
            kind += f" {'>' if self.low_open else '≥'} {self.low}"
        return kind + (" or null" if self.optional else "")

    def check(self, where: str, name: str, value: Any) -> Any:
        """``value`` if it is valid (ints widened to float for float options), else a BadInputError."""
        if value is None and self.optional:
            return None
        ok = False
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        if ok and self.kind is not bool:
            below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            above = self.high is not None and value > self.high
            ok = not (below or above)
        if not ok:
            raise BadInputError(f"{where}: option {name} must be {self.describe()}, got {value!r}")
        return value


@dataclass
class OperatorInfo:
    method: str
    dim: int
    counts: dict[str, int]
    encoder_id: str | None = None
    fingerprint: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION


@dataclass
class FitContext:
    """What a method's ``fit`` needs besides the data: bad-row policy, progress, chunking."""

    skip_bad: BadRows | None = None
    progress: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    _passed: set[str] = field(default_factory=set, repr=False)

    def _bad_rows(self, source: ChunkSource) -> BadRows | None:
        """The report on a source's first pass; a throwaway one on later passes (same rows)."""
        if self.skip_bad is None:
            return None
        if source.name in self._passed:
            return BadRows()
        self._passed.add(source.name)
        return self.skip_bad

    def _bar(self, source: ChunkSource, desc: str):
        return tqdm(total=source.num_rows, desc=desc, unit="row", unit_scale=True,
                    disable=not self.progress, leave=False)

    def blocks(self, source: ChunkSource, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One validated pass over this process's rows of ``source`` (see ``normalized_blocks``)."""
        with self._bar(source, desc) as bar:
            yield from normalized_blocks(source, self._bad_rows(source), self.chunk_rows, bar.update)

    def moments(self, source: ChunkSource, desc: str, second_moment: bool = False) -> MomentStats:
        """Moments of ``source`` over all ranks."""
        with self._bar(source, desc) as bar:
            stats = accumulate(source, second_moment, self._bad_rows(source), bar.update, self.chunk_rows)
        stats.all_reduce()
        stats.require_rows(source.name)
        return stats

    def mean_over_ranks(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """``Σ / n`` where both the vector sum and the count are summed over ranks."""
        packed = torch.cat([total, torch.tensor([float(count)], dtype=torch.float64)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        return packed[:-1] / packed[-1]


def fingerprint(*stats: MomentStats) -> str:
    """sha256 of counts and fp64 means rounded to 1e-10 (stable across shard orderings)."""
    digest = hashlib.sha256()
    for s in stats:
        digest.update(str(s.count).encode())
        digest.update(np.round(s.mean.numpy(), 10).tobytes())
    return digest.hexdigest()


class Operator(torch.nn.Module):
    """Frozen alignment operator. Subclasses set ``method``, ``buffer_names`` and implement
    ``fit`` (classmethod) and ``transform`` (float tensor → unit vectors)."""

    method: ClassVar[str]
    buffer_names: ClassVar[tuple[str, ...]] = ()
    # Exact shape of each buffer: "d" is the operator dim, another name an integer option.
    buffer_shapes: ClassVar[dict[str, tuple[int | str, ...]]] = {}
    default_options: ClassVar[dict[str, Any]] = {}
    option_specs: ClassVar[dict[str, Opt]] = {}

    def __init__(self, info: OperatorInfo, **buffers: torch.Tensor) -> None:
        super().__init__()
        if set(buffers) != set(self.buffer_names):
            raise ArtifactMismatchError(
                f"{self.method}: expected buffers {sorted(self.buffer_names)}, got {sorted(buffers)}"
            )
        self.info = info
        self.options = {**self.default_options, **info.options}
        for key, spec in self.option_specs.items():
            self.options[key] = spec.check(self.method, key, self.options[key])
        for name, tensor in buffers.items():
            expected = self.expected_shape(name)
            if tuple(tensor.shape) != expected:
                raise ArtifactMismatchError(
                    f"{self.method}: buffer {name!r} has shape {tuple(tensor.shape)}, expected {expected} "
                    f"(operator dim is {info.dim})"
                )
            if not tensor.is_floating_point() and tensor.dtype != torch.int64:
                raise ArtifactMismatchError(f"{self.method}: buffer {name!r} has dtype {tensor.dtype}, expected float")
            tensor = tensor.detach().to(torch.float64).clone()
            if not bool(torch.isfinite(tensor).all()):
                raise ArtifactMismatchError(f"{self.method}: buffer {name!r} has NaN or Inf values; refit the operator")
            self.register_buffer(name, tensor)
        self.check_buffers()

    def expected_shape(self, name: str) -> tuple[int, ...]:
        """The exact shape buffer ``name`` must have (``buffer_shapes``; default ``(dim,)``)."""
        spec = self.buffer_shapes.get(name, ("d",))
        return tuple(self.info.dim if s == "d" else int(self.options[s]) if isinstance(s, str) else s for s in spec)

    def check_buffers(self) -> None:
        """Refuse buffers no fit can produce (a mean of unit vectors is inside the unit ball)."""
        for name in ("mu_text", "mu_image"):
            if name in self.buffer_names and float(torch.linalg.vector_norm(getattr(self, name))) > 1 + 1e-6:
                raise ArtifactMismatchError(
                    f"{self.method}: buffer {name!r} has norm > 1, impossible for a mean of unit vectors; refit the operator"
                )

    @property
    def dim(self) -> int:
        return self.info.dim

    # --- fitting -----------------------------------------------------------------------
    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options: Any) -> Operator:
        raise NotImplementedError

    @classmethod
    def make_info(cls, text_stats: MomentStats, image_stats: MomentStats, options: dict[str, Any]) -> OperatorInfo:
        return OperatorInfo(
            method=cls.method,
            dim=text_stats.dim,
            counts={"text": text_stats.count, "image": image_stats.count},
            fingerprint=fingerprint(text_stats, image_stats),
            options=options,
        )

    @classmethod
    def fit_two_means(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, options: dict[str, Any]) -> Operator:
        """Fit for methods whose only statistics are the two means (``mu_text``, ``mu_image``)."""
        options = cls.check_options(options)
        text_stats = ctx.moments(text, f"{cls.method}: text")
        image_stats = ctx.moments(image, f"{cls.method}: image")
        info = cls.make_info(text_stats, image_stats, options)
        return cls(info, mu_text=text_stats.mean, mu_image=image_stats.mean)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in; unknown keys, wrong types and out-of-range values refused."""
        unknown = set(options) - set(cls.default_options)
        if unknown:
            raise BadInputError(f"{cls.method}: unknown options {sorted(unknown)}; known: {sorted(cls.default_options)}")
        merged = {**cls.default_options, **options}
        for key, spec in cls.option_specs.items():
            merged[key] = spec.check(cls.method, key, merged[key])
        return merged

    @staticmethod
    def require_spread(stats: MomentStats, name: str, what: str, minimum_rows: int = 2) -> None:
        """Refuse statistics that cannot define a scale or covariance (one row, identical rows)."""
        if stats.count < minimum_rows:
            raise BadInputError(
                f"{name}: {stats.count} usable row(s); {what} needs at least {minimum_rows} to estimate a spread"
            )
        if not stats.trace > MIN_TRACE:
            raise BadInputError(
                f"{name}: the embeddings have no spread (trace {stats.trace:.3g}): all rows are (nearly) "
                f"identical, so {what} is undefined; check the inputs"
            )

    # --- applying ----------------------------------------------------------------------
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map unit text embeddings (compute dtype) to the image distribution."""
        raise NotImplementedError

    def transform_target(self, x: torch.Tensor) -> torch.Tensor:
        """What a real image embedding becomes; unit vectors in, unit vectors out."""
        return x

    def buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(device=like.device, dtype=like.dtype)

    def _apply_map(self, x, fn: Callable[[torch.Tensor], torch.Tensor]):
        is_numpy = isinstance(x, np.ndarray)
        tensor = torch.from_numpy(x) if is_numpy else x
        if tensor.shape[-1] != self.dim:
            raise BadInputError(f"{self.method} operator expects dim {self.dim}, got input of shape {tuple(tensor.shape)}")
        compute = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            work = tensor.to(compute)
            norms = torch.linalg.vector_norm(work, dim=-1, keepdim=True)
            if not bool(torch.isfinite(norms).all()) or bool((norms <= 1e-12).any()):
                raise BadInputError(f"{self.method} operator: input has NaN/Inf or zero-norm rows")
            out = fn(work / norms)
            finite = torch.isfinite(out).reshape(-1, out.shape[-1]).all(-1) if out.numel() else None
            if finite is not None and not bool(finite.all()):
                row = int(torch.nonzero(~finite)[0])
                raise BadInputError(
                    f"{self.method} operator produced NaN/Inf for input row {row} (e.g. a row equal to the "
                    "mean it subtracts, with renormalize on); nothing was written for it"
                )
            out = out.to(tensor.dtype)
        return out.numpy() if is_numpy else out

    def forward(self, x):
        """Text (source) embeddings ``[..., d]`` → aligned unit vectors, same type and dtype."""
        return self._apply_map(x, self.transform)

    def align_image(self, x):
        """Real image embeddings ``[..., d]`` → what the model sees for them."""
        return self._apply_map(x, self.transform_target)

    # --- artifact ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in self.buffer_names}
        save_file(tensors, str(directory / OPERATOR_WEIGHTS_NAME), metadata={"method": self.method})
        (directory / OPERATOR_CONFIG_NAME).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return directory

    def extra_repr(self) -> str:
        return f"method={self.method}, dim={self.dim}, encoder_id={self.info.encoder_id!r}"


def load_operator(
    directory: str | Path, expected_dim: int | None = None, encoder_id: str | None = None
) -> Operator:
    """Rebuild a saved operator (in eval mode); refuse a mismatched dim or encoder."""
    directory = Path(directory)
    config_path, weights_path = directory / OPERATOR_CONFIG_NAME, directory / OPERATOR_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: not an operator directory ({path.name} missing)")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{config_path}: invalid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise BadInputError(f"{config_path}: not a UTF-8 JSON file ({err.reason})") from err
    if not isinstance(raw, dict):
        raise ArtifactMismatchError(f"{config_path}: expected a JSON object, got {type(raw).__name__}")
    if "method" not in raw:
        raise ArtifactMismatchError(f"{config_path}: no 'method' field")
    info = _info_from_json(raw, config_path)
    if info.format_version > FORMAT_VERSION:
        raise ArtifactMismatchError(
            f"{config_path}: format version {info.format_version} is newer than this package supports ({FORMAT_VERSION})"
        )
    cls = get_operator_class(info.method)
    if expected_dim is not None and info.dim != expected_dim:
        raise ArtifactMismatchError(f"{directory}: operator was fitted for dim {info.dim}, caller expects {expected_dim}")
    if encoder_id is not None and info.encoder_id is not None and info.encoder_id != encoder_id:
        raise ArtifactMismatchError(
            f"{directory}: operator was fitted for encoder {info.encoder_id!r}, not {encoder_id!r}"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactMismatchError(f"{weights_path}: not a readable safetensors file ({err})") from err
    try:
        return cls(info, **tensors).eval()
    except RevisionError as err:
        raise type(err)(f"{directory}: {err}") from err


# Field of operator.json -> (accepted types, description) for the typed check on load.
_INFO_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "method": ((str,), "a string"),
    "dim": ((int,), "a positive integer"),
    "counts": ((dict,), "an object of row counts"),
    "encoder_id": ((str, type(None)), "a string or null"),
    "fingerprint": ((str,), "a string"),
    "options": ((dict,), "an object"),
    "package_version": ((str,), "a string"),
    "format_version": ((int,), "an integer"),
}


def _info_from_json(raw: dict, config_path: Path) -> OperatorInfo:
    """``OperatorInfo`` from ``operator.json`` with every known field's type checked."""
    values = {}
    for key, (types, described) in _INFO_TYPES.items():
        if key not in raw:
            if key in ("method", "dim", "counts"):
                raise ArtifactMismatchError(f"{config_path}: no {key!r} field")
            continue
        value = raw[key]
        if not isinstance(value, types) or isinstance(value, bool) or (key == "dim" and value < 1):
            raise ArtifactMismatchError(f"{config_path}: field {key!r} must be {described}, got {value!r}")
        values[key] = value
    for name, count in values["counts"].items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ArtifactMismatchError(f"{config_path}: counts[{name!r}] must be a non-negative integer, got {count!r}")
    return OperatorInfo(**values)


def fit_operator(
    method: str,
    text,
    image,
    *,
    encoder_id: str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **options: Any,
) -> Operator:
    """Fit ``method`` on text (source) and image (target) embeddings.

    ``text``/``image``: ``.npy`` paths, feature-store directories, arrays or chunk sources.
    Under torch.distributed each rank reads its own contiguous slice of the rows and the
    statistics are all-reduced, so every rank ends with the same operator.
    """
    cls = get_operator_class(method)
    options = cls.check_options(options)
    text_src, image_src = open_source(text), open_source(image)
    check_dim(image_src, text_src.dim)
    encoder_id = _resolve_encoder_id(encoder_id, text_src, image_src)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        text_src, image_src = text_src.shard(rank, world), image_src.shard(rank, world)
    ctx = FitContext(BadRows() if skip_bad else None, progress, chunk_rows)
    operator = cls.fit(text_src, image_src, ctx, **options)
    operator.info.encoder_id = encoder_id
    if ctx.skip_bad is not None and ctx.skip_bad.count:
        logger.warning(ctx.skip_bad.summary())
        operator.info.options["skipped_bad_rows"] = ctx.skip_bad.count
    return operator.eval()


def _resolve_encoder_id(given: str | None, *sources: ChunkSource) -> str | None:
    ids = {s.encoder_id for s in sources if s.encoder_id is not None}
    if given is not None:
        ids.add(given)
    if len(ids) > 1:
        described = ", ".join(f"{s.name}: {s.encoder_id!r}" for s in sources)
        raise ArtifactMismatchError(f"inputs come from different encoders ({described}; requested {given!r})")
    return ids.pop() if ids else None


@contextmanager
def train_mode(operator: Operator, enabled: bool = True):
    """Temporarily put ``operator`` in training mode (e.g. C3 noise) and restore it."""
    previous = operator.training
    operator.train(enabled)
    try:
        yield operator
    finally:
        operator.train(previous)
