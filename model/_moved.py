"""Old module names of code that moved into `model.inputs` and `model.checkpoints`.

`import model.media`, `from model import demo` and `python -m model.demo` keep working: each old name
resolves to the very module object at its new path (one module, not a copy), so notebooks and scripts
written against the earlier layout run unchanged. One finder instead of a shim file per old name keeps
`model/` holding only the vLLM plugin and its two subpackages.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "model.media": "model.inputs.media",
    "model.prompts": "model.inputs.prompts",
    "model.audio_chunks": "model.inputs.audio_chunks",
    "model.tiny": "model.checkpoints.tiny",
    "model.demo": "model.checkpoints.demo",
    "model.demo_data": "model.checkpoints.demo_data",
    "model.train_demo": "model.checkpoints.train_demo",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self, origin=importlib.util.find_spec(MOVED[name]).origin)

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the alias spec on the real module; give it back its own.
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, name):  # `python -m model.checkpoints.demo`: runpy runs the moved module's code as __main__
        real = importlib.util.find_spec(MOVED[name])
        return real.loader.get_code(real.name)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
