"""Sandbox templates as config: interpreter, pinned packages, limits and lifetimes.

A template's packages are installed once per machine (``pip install --target``, keyed by a
hash of the pins) into a folder that each sandbox of the template sees read-only at
/sandbox/template; a template whose packages cannot be had is reported unavailable with the
reason, and the other templates still serve.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.kit.sandbox import Bind, BoxSpec, Limits

log = structlog.get_logger(__name__)
INSIDE_SITE = "/sandbox/template"


class TemplateError(ValueError):
    """The templates file is unusable; the message names the file and each bad field."""


class TemplateLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: int = Field(default=512, ge=16, le=65_536, description="Address space per command.")
    cpu_s: int = Field(default=30, ge=1, le=86_400, description="CPU seconds per command.")
    pids: int = Field(default=64, ge=4, le=4096, description="Processes in the whole sandbox.")
    disk_mb: int = Field(default=256, ge=1, le=65_536, description="Workspace and /tmp, each.")
    wall_s: int = Field(default=60, ge=1, le=3600, description="Default wall clock per command.")
    output_kb: int = Field(default=1024, ge=1, le=65_536, description="stdout+stderr per command.")


class Template(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    interpreter: str = Field(default="/usr/bin/python3", pattern=r"^/")
    packages: dict[str, str] = Field(default_factory=dict, description="name -> exact version")
    limits: TemplateLimits = TemplateLimits()
    ttl_s: int = Field(default=900, ge=10, le=86_400)
    idle_s: int = Field(default=300, ge=5, le=86_400)
    max_lifetime_s: int = Field(default=3600, ge=10, le=7 * 86_400)
    pool: int = Field(default=0, ge=0, le=32)

    def pins(self) -> list[str]:
        return [f"{name}=={version}" for name, version in sorted(self.packages.items())]


class TemplatesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    templates: dict[str, Template] = Field(min_length=1)


def load_templates(path: Path) -> dict[str, Template]:
    try:
        raw = yaml.safe_load(path.read_text())
        return dict(TemplatesFile.model_validate(raw).templates)
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such templates file (set AICLOUD_AGENT_RUNTIME_TEMPLATES)") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TemplateError(f"{path}: {problems}") from None


class Prepared(BaseModel):
    """A template ready to start sandboxes from, or the reason it cannot."""

    model_config = ConfigDict(frozen=True)

    name: str
    template: Template
    site: str | None = None
    error: str | None = None

    def box_spec(self, *, uid: int | None, egress_port: int | None) -> BoxSpec:
        limits = self.template.limits
        binds = (Bind(Path(self.site), INSIDE_SITE),) if self.site else ()
        # The sandbox's own ceilings: commands are lowered to the template's limits when they
        # start; the daemon itself needs some headroom above one command's address space.
        ceiling = Limits(memory_bytes=(limits.memory_mb + 512) << 20, pids=limits.pids + 16,
                         cpu_seconds=None, file_bytes=limits.disk_mb << 20)
        return BoxSpec(interpreter=self.template.interpreter, limits=ceiling,
                       workspace_bytes=limits.disk_mb << 20, binds=binds, uid=uid, egress_port=egress_port)

    def command_env(self, *, egress_port: int | None) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/workspace", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        if self.site:
            env["PYTHONPATH"] = INSIDE_SITE
        if egress_port:
            proxy = f"http://127.0.0.1:{egress_port}"
            env |= {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}
        return env


async def prepare(name: str, template: Template, *, cache: Path) -> Prepared:
    """Check the interpreter and install the pinned packages (once per machine)."""
    if not os.access(template.interpreter, os.X_OK):
        return Prepared(name=name, template=template, error=f"interpreter {template.interpreter} not found")
    if not template.packages:
        return Prepared(name=name, template=template)
    key = hashlib.sha256(json.dumps([template.interpreter, template.pins()]).encode()).hexdigest()[:16]
    site = cache / f"{name}-{key}"
    if not (site / ".complete").exists():
        error = await _install(template, site)
        if error:
            log.warning("template.unavailable", template=name, error=error)
            return Prepared(name=name, template=template, error=error)
    return Prepared(name=name, template=template, site=str(site))


async def _install(template: Template, site: Path) -> str | None:
    version = await _python_version(template.interpreter)
    partial = site.with_name(f"{site.name}.partial-{os.getpid()}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--python-version", version, "--target", str(partial), *template.pins(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return f"installing {', '.join(template.pins())} failed: {out.decode(errors='replace')[-300:]}"
    os.chmod(partial, 0o755)
    (partial / ".complete").touch()
    try:
        partial.rename(site)
    except OSError:  # another runtime installed the same pins first: use theirs
        shutil.rmtree(partial, ignore_errors=True)
    return None


async def _python_version(interpreter: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        interpreter, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return out.decode().strip()
