"""The gate a model folder passes before it is served: what it holds, in which formats, how
big, under which license, and whether any pickle in it runs code when it is loaded.

A pickle (PyTorch ``.bin``/``.pt``, joblib, ``.pkl``...) is a program: unpickling may call any
Python function it names. The model server never unpickles (it reads safetensors and JSON),
but a folder carrying a malicious pickle is refused all the same, since someone will load it
elsewhere. ``picklescan`` lists the globals a pickle imports without running it; a dangerous
one (``posix system``, ``builtins eval``...) or a pickle that cannot be fully parsed refuses the
folder. Globals that are neither known-safe nor known-dangerous are reported, not refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from picklescan.scanner import SafetyLevel, scan_file_path

DEFAULT_MAX_BYTES = 20 << 30
SERVABLE = {".safetensors": "safetensors", ".onnx": "onnx"}
JSON_WEIGHTS = {"model.json"}
PICKLE = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
UNSUPPORTED = {".h5", ".hdf5", ".keras", ".msgpack", ".gguf", ".ggml", ".tflite", ".pb", ".ot",
               ".mlmodel", ".pdparams", ".nemo", ".mar", ".caffemodel", ".params"}
# Files with any other suffix are sniffed: a pickle or a zip (PyTorch's format) under a
# neutral name is scanned like one with a pickle suffix.
TEXT = {".json", ".txt", ".md", ".model", ".yaml", ".yml", ".py", ".cfg", ".gitattributes", ".csv"}
_PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))
_ZIP_MAGIC = b"PK\x03\x04"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")


@dataclass(frozen=True)
class ScanReport:
    allowed: bool
    format: str
    """safetensors | onnx | json | pickle | mixed (more than one), or none."""
    size_bytes: int
    files: list[tuple[str, int]]
    """(path relative to the folder, size in bytes), sorted."""
    license: str
    findings: list[str]
    reason: str
    """One sentence for the user: why it was refused, or what was accepted."""


def scan_model(folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ScanReport:
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    files = _files(folder)
    size = sum(n for _, n in files)
    kinds = {name: _kind(folder / name) for name, _ in files}
    weights = {name: kind for name, kind in kinds.items() if kind not in ("", "unsupported")}
    found = sorted(set(weights.values()))
    fmt = found[0] if len(found) == 1 else "mixed" if found else "none"

    def report(allowed: bool, findings: list[str], reason: str) -> ScanReport:
        return ScanReport(allowed=allowed, format=fmt, size_bytes=size, files=files,
                          license=_license(folder), findings=findings, reason=reason)

    findings = [f"{name}: unsupported weight format {Path(name).suffix}, not served"
                for name, kind in kinds.items() if kind == "unsupported"]
    if size > max_bytes:
        return report(False, findings, f"The model is {_gib(size)}, over the {_gib(max_bytes)} limit.")
    if not weights:
        what = "only weights in formats the platform cannot serve" if findings else "no model weights"
        return report(False, findings, f"{what} found in {folder} (expected safetensors, ONNX or model.json)")
    refusals: list[str] = []
    for name in (n for n, kind in weights.items() if kind == "pickle"):
        dangerous, notes = _scan_pickle(folder / name, name)
        findings += notes
        refusals += dangerous
    if refusals:
        return report(False, findings, f"Refused: {refusals[0]}.")
    if fmt == "pickle":
        return report(True, findings, "Accepted pickle weights that import nothing dangerous; "
                                      "convert them to safetensors to serve them.")
    return report(True, findings, f"Accepted {fmt} weights ({_gib(size)}).")


def _files(folder: Path) -> list[tuple[str, int]]:
    """Every file under the folder; links are followed (a Hugging Face snapshot is links)."""
    found = []
    for base, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            path = Path(base, name)
            if path.is_file():
                found.append((str(path.relative_to(folder)), path.stat().st_size))
    return sorted(found)


def _kind(path: Path) -> str:
    """safetensors | onnx | json | pickle | unsupported, or "" for a file that is no weights."""
    suffix = path.suffix.lower()
    if suffix in SERVABLE:
        return SERVABLE[suffix]
    if path.name in JSON_WEIGHTS:
        return "json"
    if suffix in PICKLE:
        return "pickle"
    if suffix in UNSUPPORTED:
        return "unsupported"
    if suffix in TEXT or path.name.startswith("."):
        return ""
    with path.open("rb") as handle:
        head = handle.read(4)
    return "pickle" if head.startswith(_PICKLE_MAGIC) or head == _ZIP_MAGIC else ""


def _scan_pickle(path: Path, name: str) -> tuple[list[str], list[str]]:
    """(reasons to refuse, all findings) for one pickle-based file."""
    try:
        result = scan_file_path(str(path))
    except Exception as exc:  # picklescan raises on what it cannot read: treat it as unverifiable
        reason = f"{name} could not be scanned ({type(exc).__name__}: {exc})"
        return [reason], [reason]
    dangerous = [f"{name} imports dangerous global '{g.module} {g.name}'"
                 for g in result.globals if g.safety is SafetyLevel.Dangerous]
    suspicious = [f"{name} imports '{g.module} {g.name}', not known to be safe"
                  for g in result.globals if g.safety is SafetyLevel.Suspicious]
    if result.scan_err:
        dangerous.append(f"{name} could not be fully parsed as a pickle")
    return dangerous, [*dangerous, *suspicious]


def _license(folder: Path) -> str:
    """The README's YAML front matter ``license:``, else a LICENSE file's first line."""
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            try:
                meta = yaml.safe_load(text[3:].split("\n---", 1)[0])
            except yaml.YAMLError:
                meta = None
            if isinstance(meta, dict) and meta.get("license"):
                value = meta["license"]
                return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    for name in LICENSE_FILES:
        if (folder / name).is_file():
            lines = (folder / name).read_text(errors="replace").splitlines()
            return next((line.strip() for line in lines if line.strip()), "")
    return ""


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.1f} MiB"
