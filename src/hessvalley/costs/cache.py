"""The calibration cache: one JSON file per device, one entry per measured model.

``.hessvalley/calibration/<device key>.json`` (git-ignored with ``.hessvalley/``); the key
names what the figures depend on: the device (CPU model or CUDA device name), the torch
version and the thread count. A second ``plan`` of the same models reads the file and
imports no torch on a CPU; ``recalibrate`` measures again.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_DIR = Path(".hessvalley") / "calibration"


def cpu_name() -> str:
    """The CPU model string (``model name`` of /proc/cpuinfo, else ``platform``'s)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device: str, threads: int) -> dict[str, Any]:
    """What calibration figures depend on: device name, torch version, threads."""
    info: dict[str, Any] = {"device": device, "threads": threads}
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        properties = torch.cuda.get_device_properties(index)
        info.update(name=properties.name, memory_mb=properties.total_memory / 2**20)
        info["torch"] = torch.__version__
    else:
        info["name"] = cpu_name()
        info["torch"] = importlib.metadata.version("torch")
    return info


def device_key(info: Mapping[str, Any]) -> str:
    """File-name-safe key of ``device_info``."""
    text = f"{info['device'].split(':')[0]}-{info['name']}-torch{info['torch']}-t{info['threads']}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def entry_key(identity: Mapping[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


@dataclass
class Calibration:
    """Figures for one device: per model identity, per toy, and a dense eigensolve."""

    info: dict[str, Any]
    path: Path
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    toys: dict[str, dict[str, Any]] = field(default_factory=dict)
    eigh: dict[str, Any] | None = None
    measured: list[str] = field(default_factory=list)  # what this call measured

    def model(self, identity: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.models.get(entry_key(identity))

    def dates(self) -> list[str]:
        return sorted(f["measured_at"] for f in self.models.values() if "measured_at" in f)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": self.info, "models": self.models, "toys": self.toys}
        payload["eigh"] = self.eigh
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def load(info: Mapping[str, Any], cache_dir: str | Path = CACHE_DIR) -> Calibration:
    """The cached calibration of this device (empty if none, or unreadable)."""
    path = Path(cache_dir) / f"{device_key(info)}.json"
    calibration = Calibration(dict(info), path)
    if path.is_file():
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return calibration
        calibration.models = payload.get("models", {})
        calibration.toys = payload.get("toys", {})
        calibration.eigh = payload.get("eigh")
    return calibration


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _describe(identity: Mapping[str, Any]) -> str:
    model = identity["model"]
    extra = ", ".join(f"{k}={v}" for k, v in sorted(model.items()) if k != "name")
    shape = "x".join(map(str, identity["input_shape"]))
    name = f"{model['name']}({extra})" if extra else model["name"]
    return f"{name} on {shape}, {identity['n_classes']} classes"


def calibrate(
    info: Mapping[str, Any],
    identities: list[dict[str, Any]],
    toys: Mapping[str, Mapping[str, Any]],
    *,
    cache_dir: str | Path = CACHE_DIR,
    recalibrate: bool = False,
    want_eigh: bool = False,
    say: Callable[[str], None] = _say,
) -> Calibration:
    """Figures of every model identity and toy, measured on the device unless cached."""
    calibration = load(info, cache_dir)
    if recalibrate:
        calibration.models, calibration.toys, calibration.eigh = {}, {}, None
    unique = {entry_key(i): i for i in identities}
    missing = [i for i in unique.values() if calibration.model(i) is None]
    missing_toys = [n for n, s in toys.items() if entry_key({n: s}) not in calibration.toys]
    need_eigh = want_eigh and calibration.eigh is None
    if not (missing or missing_toys or need_eigh):
        return calibration
    import torch

    from hessvalley.costs import calibration as measure
    from hessvalley.device import resolve_device

    torch.set_num_threads(int(info["threads"]))
    device = resolve_device(info["device"])
    say(f"calibrating on {info['name']} ({info['device']}, {info['threads']} threads):\n")
    for identity in missing:
        say(f"  {_describe(identity)} ... ")
        start = time.perf_counter()
        busy = os.getloadavg()[0]  # other processes' demand for the cores, before measuring
        figures = measure.calibrate_model(identity, device)
        figures.update(load_before=busy, cpus=os.cpu_count())
        calibration.models[entry_key(identity)] = figures
        calibration.measured.append(_describe(identity))
        say(f"{time.perf_counter() - start:.1f} s\n")
    for name in missing_toys:
        say(f"  toy {name} ... ")
        figures = measure.toy_step_seconds(name, toys[name])
        figures["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        calibration.toys[entry_key({name: toys[name]})] = figures
        calibration.measured.append(f"toy {name}")
        say(f"{figures['step_s'] * 1e6:.0f} µs/step\n")
    if need_eigh:
        calibration.eigh = measure.eigh_seconds(device)
        calibration.measured.append("eigh")
    calibration.save()
    return calibration
