"""``revision patch-host``: apply the LLaVA 1.2.2 compatibility patches to a llava package.

LLaVA 1.2.2 (``llava-torch==1.2.2.post1``, or the upstream git repository and its forks) was
written for transformers 4.36; the patches make it run on current transformers (4.46 ... 5.x):
``cache_position`` in ``generate``, moved imports, changed ``Trainer`` signatures, flags
removed in 5.x, CPU DeepSpeed, ZeRO-3 projector loading, and import errors that LLaVA's bare
``except`` used to hide. What a runtime hook can do (the tower, data, checkpoints) is in
``revision_plugin.hosts.llava``.

The patches ship inside this package (``hosts/patches/llava-1.2.2/*.patch``, plain unified
diffs: ``git apply`` in a checkout or ``patch -p1`` in ``site-packages`` apply them too); this
module applies them itself (no ``patch`` program needed) and is idempotent. The host is
identified by *content*, hunk by hunk, so a wheel install, an editable git checkout and a fork
are handled alike:

* every file is classified *pristine* (each hunk applies; for a wheel install, whose
  ``RECORD`` is at hand, the sha256 must also be the released one), *patched* (each hunk is
  already there and reverse-applying them gives back the original) or *modified* (neither:
  refused, with a per-hunk report of what does not fit and what to do);
* nothing is written unless every file of every patch can be brought to the target state;
  files are replaced atomically;
* an installed llava-torch of another version is refused with a clear message.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from revision_plugin.atomic import atomic_write_bytes, shared_mode
from revision_plugin.errors import RevisionError
from revision_plugin.hosts.versions import LLAVA_DISTRIBUTION, LLAVA_PATCH_SERIES, LLAVA_VERSION

logger = logging.getLogger(__name__)

HOST_DISTRIBUTION = LLAVA_DISTRIBUTION
SUPPORTED_VERSION = LLAVA_VERSION
PATCH_SERIES = LLAVA_PATCH_SERIES

PRISTINE, PATCHED, MODIFIED = "pristine", "patched", "modified"


class PatchError(RevisionError):
    """A patch does not fit the installed files (another version, or locally edited)."""


# ----------------------------------------------------------------------------- diff parsing


@dataclass
class Hunk:
    old_start: int
    old_lines: list[str]
    new_lines: list[str]


@dataclass
class FilePatch:
    path: str  # relative to site-packages, e.g. "llava/train/train.py"
    hunks: list[Hunk] = field(default_factory=list)
    source: str = ""


_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str, source: str = "<patch>") -> list[FilePatch]:
    """Parse a unified diff (``--- a/x`` / ``+++ b/x`` headers, ``@@`` hunks)."""
    files: list[FilePatch] = []
    lines = text.splitlines(keepends=True)
    i = 0
    current: FilePatch | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = lines[i + 1][4:].split("\t")[0].strip()
            path = target[2:] if target.startswith(("a/", "b/")) else target
            current = FilePatch(path=path, source=source)
            files.append(current)
            i += 2
            continue
        match = _HUNK_RE.match(line)
        if match:
            if current is None:
                raise PatchError(f"{source}: hunk before any file header (line {i + 1})")
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            hunk = Hunk(int(match.group(1)), [], [])
            i += 1
            while (old_count > 0 or new_count > 0) and i < len(lines):
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                tag, content = body[:1], body[1:]
                if body in ("\n", "\r\n"):  # a context line whose leading space was stripped
                    tag, content = " ", body
                if tag == " ":
                    hunk.old_lines.append(content)
                    hunk.new_lines.append(content)
                    old_count -= 1
                    new_count -= 1
                elif tag == "-":
                    hunk.old_lines.append(content)
                    old_count -= 1
                elif tag == "+":
                    hunk.new_lines.append(content)
                    new_count -= 1
                else:
                    raise PatchError(f"{source}: malformed hunk line {i + 1}: {body!r}")
                i += 1
            if old_count or new_count:
                raise PatchError(f"{source}: truncated hunk for {current.path}")
            current.hunks.append(hunk)
            continue
        i += 1
    if not files:
        raise PatchError(f"{source}: no file patches found")
    return files


def apply_hunks(text: str, hunks: list[Hunk], reverse: bool = False, name: str = "") -> str:
    """Apply ``hunks`` exactly (no fuzz); the hunk may have moved, it is searched for."""
    lines = text.splitlines(keepends=True)
    offset = 0
    for number, hunk in enumerate(hunks, 1):
        old, new = (hunk.new_lines, hunk.old_lines) if reverse else (hunk.old_lines, hunk.new_lines)
        expected = max(hunk.old_start - 1 + offset, 0)
        position = _find_block(lines, old, expected)
        if position is None:
            raise PatchError(f"{name}: hunk {number} (line {hunk.old_start}) does not match")
        lines[position:position + len(old)] = new
        offset = position - (hunk.old_start - 1) + len(new) - len(old)
    return "".join(lines)


def _find_block(lines: list[str], block: list[str], expected: int) -> int | None:
    n = len(block)
    candidates = sorted(range(len(lines) - n + 1), key=lambda p: abs(p - expected))
    for position in candidates:
        if lines[position:position + n] == block:
            return position
    return None


# ----------------------------------------------------------------------------- host discovery


@dataclass
class HostInstall:
    package_dir: Path  # .../site-packages/llava, or <checkout>/llava
    version: str | None  # the wheel's version; None for a source checkout (identified by content)
    record_hashes: dict[str, str]  # relative path -> urlsafe-b64 sha256 (from the wheel RECORD)

    def describe(self) -> str:
        kind = f"llava-torch {self.version}" if self.version else "llava source checkout"
        return f"{kind} at {self.package_dir}"

    @property
    def root(self) -> Path:
        return self.package_dir.parent


def find_host(package_dir: str | Path | None = None) -> HostInstall:
    """The llava package to patch: ``package_dir`` or the importable one (not imported).

    A wheel install has ``llava_torch-*.dist-info`` beside the package (version, released
    hashes); an editable checkout (``git clone`` + ``pip install -e .``) has none and is
    identified by its files' content alone."""
    if package_dir is None:
        spec = importlib.util.find_spec("llava")
        if spec is None or not spec.submodule_search_locations:
            raise RevisionError(f"llava is not installed; install it with `pip install --no-deps {HOST_DISTRIBUTION}=={SUPPORTED_VERSION}`")
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    package_dir = Path(package_dir).resolve()
    if not (package_dir / "__init__.py").is_file():
        raise RevisionError(f"{package_dir}: not a python package directory")
    version, hashes = None, {}
    for dist in sorted(package_dir.parent.glob("llava_torch-*.dist-info")):
        metadata = dist / "METADATA"
        if metadata.is_file():
            for line in metadata.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                    break
        record = dist / "RECORD"
        if record.is_file():
            for row in csv.reader(record.read_text().splitlines()):
                if len(row) >= 2 and row[1].startswith("sha256="):
                    hashes[row[0]] = row[1].split("=", 1)[1]
        break
    return HostInstall(package_dir, version, hashes)


def default_patch_dir() -> Path:
    """``patches/llava-1.2.2``, shipped inside the package (package data: wheels carry it)."""
    candidate = Path(__file__).resolve().parent / "patches" / PATCH_SERIES
    if not candidate.is_dir():
        raise RevisionError(f"patch directory {candidate} is missing from this installation; reinstall revision_plugin")
    return candidate


def load_series(patch_dir: str | Path | None = None) -> list[FilePatch]:
    patch_dir = Path(patch_dir) if patch_dir is not None else default_patch_dir()
    files = sorted(patch_dir.glob("*.patch"))
    if not files:
        raise RevisionError(f"{patch_dir}: no *.patch files")
    series: list[FilePatch] = []
    for path in files:
        series.extend(parse_patch(path.read_text(), source=path.name))
    return series


def _sha(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# ----------------------------------------------------------------------------- status / apply


@dataclass
class FileState:
    path: str
    state: str
    detail: str = ""
    patched_text: str | None = None
    pristine_text: str | None = None


@dataclass
class HostStatus:
    install: HostInstall
    files: list[FileState]

    @property
    def applied(self) -> bool:
        return all(f.state == PATCHED for f in self.files)

    @property
    def pristine(self) -> bool:
        return all(f.state == PRISTINE for f in self.files)

    def summary(self) -> str:
        return "\n".join(f"  {f.state:9s} {f.path}" + (f" ({f.detail})" if f.detail else "") for f in self.files)


def _group(series: list[FilePatch]) -> dict[str, list[Hunk]]:
    grouped: dict[str, list[Hunk]] = {}
    for file_patch in series:
        grouped.setdefault(file_patch.path, []).extend(file_patch.hunks)
    return grouped


def host_status(package_dir: str | Path | None = None, patch_dir: str | Path | None = None) -> HostStatus:
    install = find_host(package_dir)
    states = []
    for rel, hunks in _group(load_series(patch_dir)).items():
        states.append(_classify(install, rel, hunks))
    return HostStatus(install, states)


def _classify(install: HostInstall, rel: str, hunks: list[Hunk]) -> FileState:
    path = install.root / rel
    if not path.is_file():
        return FileState(rel, MODIFIED, "file missing")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    released = install.record_hashes.get(rel)
    if released is not None and _sha(raw) == released:
        try:
            return FileState(rel, PRISTINE, patched_text=apply_hunks(text, hunks, name=rel), pristine_text=text)
        except PatchError:  # the released file itself: the patch is for another release
            return FileState(rel, MODIFIED, "the patch does not fit the released file: " + _hunk_report(text, hunks))
    # Already patched? (checked before "applies", so that a patch is never applied twice)
    try:
        restored = apply_hunks(text, hunks, reverse=True, name=rel)
        if released is None or _sha(restored.encode("utf-8")) == released:
            return FileState(rel, PATCHED, patched_text=text, pristine_text=restored)
        return FileState(rel, MODIFIED, "patched, but the file has other local edits (its sha256 is not the "
                                        "released file's after reversing the patch)")
    except PatchError:
        pass
    if released is None:
        try:
            return FileState(rel, PRISTINE, patched_text=apply_hunks(text, hunks, name=rel), pristine_text=text)
        except PatchError:
            pass
    prefix = "" if released is None else "sha256 is not the released file's; "
    return FileState(rel, MODIFIED, prefix + _hunk_report(text, hunks))


def _hunk_report(text: str, hunks: list[Hunk]) -> str:
    """Each hunk judged alone: already ``applied``, ``applies``, or ``conflict`` (and where)."""
    lines = text.splitlines(keepends=True)
    verdicts = []
    for number, hunk in enumerate(hunks, 1):
        if _find_block(lines, hunk.new_lines, hunk.old_start - 1) is not None:
            verdict = "applied"
        elif _find_block(lines, hunk.old_lines, hunk.old_start - 1) is not None:
            verdict = "applies"
        else:
            changed = next((line for line in hunk.old_lines if line not in hunk.new_lines), hunk.old_lines[0] if hunk.old_lines else "")
            verdict = f"conflict (expected near line {hunk.old_start}: {changed.strip()[:60]!r})"
        verdicts.append(f"hunk {number}: {verdict}")
    return "; ".join(verdicts)


def check_version(install: HostInstall) -> None:
    """Refuse an installed llava-torch wheel of another version (a checkout has no version to
    check: its files are judged hunk by hunk)."""
    if install.version is not None and install.version != SUPPORTED_VERSION:
        raise PatchError(
            f"llava-torch {install.version} is installed at {install.package_dir}; the patches in {PATCH_SERIES} "
            f"are for llava-torch {SUPPORTED_VERSION} only. Install that version "
            f"(`pip install --no-deps {HOST_DISTRIBUTION}=={SUPPORTED_VERSION}`) or port the patches."
        )


def patch_host(package_dir: str | Path | None = None, patch_dir: str | Path | None = None, *, reverse: bool = False,
               dry_run: bool = False) -> HostStatus:
    """Bring every patched file to the patched (or, ``reverse``, released) state; idempotent.
    Writes nothing if any file is in an unexpected state."""
    install = find_host(package_dir)
    check_version(install)
    status = host_status(install.package_dir, patch_dir)
    bad = [f for f in status.files if f.state == MODIFIED]
    if bad:
        advice = (
            f"Reinstall with `pip install --force-reinstall --no-deps {HOST_DISTRIBUTION}=={SUPPORTED_VERSION}`."
            if install.version is not None else
            "In a fork, port each hunk marked 'conflict' by hand (or try `git apply --3way` on the patch "
            "files printed by `revision patch-host --print-dir`), then rerun; nothing was written."
        )
        raise PatchError(
            f"{install.describe()}: cannot {'un' if reverse else ''}patch, unexpected file contents:\n"
            + "\n".join(f"  {f.path}: {f.detail}" for f in bad) + "\n" + advice
        )
    target = PRISTINE if reverse else PATCHED
    todo = [f for f in status.files if f.state != target]
    for file_state in todo:
        text = file_state.pristine_text if reverse else file_state.patched_text
        logger.info("%s %s", "would write" if dry_run else "writing", install.root / file_state.path)
        if not dry_run:
            _atomic_write(install.root / file_state.path, text)
    if not todo:
        logger.info("%s: already %s", install.package_dir, target)
    return status if dry_run else host_status(install.package_dir, patch_dir)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=shared_mode(path))
    cache = path.parent / "__pycache__"
    for pyc in cache.glob(f"{path.stem}.*.pyc") if cache.is_dir() else []:
        pyc.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("--llava-dir", help="the llava package directory to patch (default: the importable one)")
    parser.add_argument("--patch-dir", help=f"directory of *.patch files (default: the shipped {PATCH_SERIES})")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 unless every patch is applied")
    parser.add_argument("--reverse", action="store_true", help="restore the released files")
    parser.add_argument("--dry-run", action="store_true", help="say what would be written, write nothing")
    parser.add_argument("--print-dir", action="store_true",
                        help="print the directory of the shipped patch files (for `git apply` in a fork) and exit")


def run(args) -> int:
    if args.print_dir:
        print(Path(args.patch_dir).resolve() if args.patch_dir else default_patch_dir())
        return 0
    if args.check:
        install = find_host(args.llava_dir)
        check_version(install)
        status = host_status(install.package_dir, args.patch_dir)
        print(f"{install.describe()}:\n{status.summary()}")
        return 0 if status.applied else 1
    status = patch_host(args.llava_dir, args.patch_dir, reverse=args.reverse, dry_run=args.dry_run)
    state = "original" if args.reverse else "patched"
    print(f"{status.install.describe()}: {state}\n{status.summary()}")
    return 0
