"""The Qwen2.5-Omni thinker as vLLM serves it, with the interface its state extraction reads.

vLLM extracts hidden states from the layers a model exposes through its EAGLE-3 interface. Its
Qwen2.5-Omni thinker runs vLLM's Qwen2 decoder, which records those layers, but the thinker class
does not declare the interface; this subclass only declares it. (Qwen3-Omni's thinker declares it.)
Imported only where vllm is installed.
"""

from __future__ import annotations

from vllm.model_executor.models.interfaces import SupportsEagle3
from vllm.model_executor.models.qwen2_5_omni_thinker import Qwen2_5OmniThinkerForConditionalGeneration

ARCHITECTURE = "OmniJobsQwen2_5OmniThinkerWithStates"


class Qwen2_5OmniThinkerWithStates(Qwen2_5OmniThinkerForConditionalGeneration, SupportsEagle3):
    """vLLM's thinker unchanged; the interface in its bases is what lets extraction read its layers."""


def register() -> str:
    """Register the class with vLLM (idempotent); returns the architecture name to load it by."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # The class itself, not its import path: vLLM inspects a lazily named class in a subprocess.
        ModelRegistry.register_model(ARCHITECTURE, Qwen2_5OmniThinkerWithStates)
    return ARCHITECTURE
