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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from revision_plugin import __version__
from revision_plugin.align.sources import ChunkSource
from revision_plugin.align.stats import MomentStats
from revision_plugin.errors import ArtifactMismatchError, BadInputError

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

    def map_rows(self, x: torch.Tensor, norm: torch.Tensor, image: bool = False,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """The ``revision align`` path: validated raw rows ``x`` ``[n, d]`` (finite, non-zero,
        norms ``norm``) → aligned rows, on ``x``'s device; written into ``out`` when given."""
        return self.row_mapper(image)(x, norm, out)

    def row_mapper(self, image: bool = False) -> Callable[..., torch.Tensor]:
        """``map_rows`` for one side, with whatever it derives from the buffers computed once:
        ``f(x, norm, out=None)``; a job mapping many blocks calls this once.

        Default: the float64 map of the unit rows (``transform``/``transform_target``);
        methods with a cheaper exact form override it (ReAlign: one float32 affine map).
        """
        side = self.transform_target if image else self.transform

        def map_rows(x: torch.Tensor, norm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            x = x.to(torch.float64)
            u = x * torch.linalg.vector_norm(x, dim=1).reciprocal()[:, None]  # as the fit's blocks
            result = side(u)
            return result if out is None else out.copy_(result)

        return map_rows

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


@contextmanager
def train_mode(operator: Operator, enabled: bool = True):
    """Temporarily put ``operator`` in training mode (e.g. C3 noise) and restore it."""
    previous = operator.training
    operator.train(enabled)
    try:
        yield operator
    finally:
        operator.train(previous)


# Fitting and artifact loading live in their own modules; re-exported here (their historical home).
from revision_plugin.align.artifact import load_operator  # noqa: E402
from revision_plugin.align.fitting import FitContext, fit_operator  # noqa: E402

__all__ = [
    "OPERATOR_CONFIG_NAME", "OPERATOR_REGISTRY", "OPERATOR_WEIGHTS_NAME", "FitContext", "Operator", "OperatorInfo", "Opt",
    "fingerprint", "fit_operator", "get_operator_class", "load_operator", "register_operator", "train_mode", "unit",
]
