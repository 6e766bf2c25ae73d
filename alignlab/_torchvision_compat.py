"""Make `import torchvision` work next to a CPU-only torch.

The torchvision wheel on PyPI is built against CUDA torch. Next to the CPU torch wheel its C
extension cannot load, and torchvision 0.28 then fails at import time: its fake-kernel
registrations for `torchvision::nms` / `torchvision::qnms` are not guarded by `_has_ops()` like the
others, so they point at operators that were never defined. open_clip (and transformers' image
processors) import torchvision only for its pure-Python transforms, so we declare the two missing
operator schemas and import again. Calling those operators still fails with torchvision's own
"Couldn't load custom C++ ops" error; where the extension loads (a CUDA machine) nothing changes.
"""

from __future__ import annotations

import sys

import torch

_UNGUARDED_OPS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_registry: list[torch.library.Library] = []


def ensure_torchvision_importable() -> bool:
    """Import torchvision, repairing the CPU-torch failure. Returns True when the repair was needed."""
    try:
        import torchvision  # noqa: F401
        return False
    except ImportError:
        return False  # not installed: nothing to repair
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "FRAGMENT")
    for qualname, schema in _UNGUARDED_OPS.items():
        library.define(qualname.split("::")[1] + schema)
    _registry.append(library)  # a Library deregisters its ops when garbage-collected
    import torchvision  # noqa: F401,F811
    return True
