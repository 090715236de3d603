"""Make PyPI's torchvision importable beside CPU torch in the vLLM environment.

PyPI's torchvision wheel is a CUDA build: its C ops (nms, roi_align) cannot load next to torch's
CPU build, and importing it then fails while registering a fake kernel for `torchvision::nms`.
vLLM's image processors need only its pure-Python transforms, so the unconditional
registrations are made conditional on the ops being there, like the others in that file already are.
Idempotent; run by tests/vllm_env.sh.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

UNCONDITIONAL = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.M)
CONDITIONAL = r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))"


def main() -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    text = path.read_text()
    patched = UNCONDITIONAL.sub(CONDITIONAL, text)
    if patched != text:
        path.write_text(patched)


if __name__ == "__main__":
    main()
