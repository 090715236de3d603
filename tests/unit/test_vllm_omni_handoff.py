"""The vLLM omni thinker's pure parts: engine choice, layer choice, final norm, bundle slicing."""

from __future__ import annotations

import pytest
import torch

from omnijobs.engines.choice import choose_engine
from omnijobs.engines.kinds import ENGINE_KINDS
from omnijobs.engines.vllm.handoff import ThinkerWeights, bundle, state_layers
from omnijobs.engines.vllm.omni_prompts import OmniPrompt
from omnijobs.engines.vllm.states import States
from omnijobs.errors import EngineDead
from omnijobs.pipelines import load_registry


@pytest.mark.parametrize("pipeline", ["qwen2_5_omni", "qwen3_omni"])
def test_the_thinker_stages_go_to_vllm_where_it_is_chosen(pipeline):
    stage = load_registry().get(pipeline).stages["thinker"]
    assert choose_engine(stage, "vllm").engine == "vllm_omni_thinker"
    assert choose_engine(stage, "transformers").engine == stage.engine
    # This environment has no vllm: auto keeps transformers.
    assert choose_engine(stage, "auto").engine == stage.engine
    pinned = stage.model_copy(update={"options": {**stage.options, "engine_choice": "fixed"}})
    assert choose_engine(pinned, "vllm").engine == stage.engine
    # The vLLM kind stands in for the thinker kind: the same ports.
    vllm, own = ENGINE_KINDS["vllm_omni_thinker"], ENGINE_KINDS[stage.engine]
    assert (vllm.inputs, vllm.outputs) == (own.inputs, own.outputs)


def test_the_hidden_layer_counts_as_transformers_hidden_states_do():
    assert state_layers(-1, 2) == (2, [0, 2])  # the last entry: the final norm's output
    assert state_layers(1, 2) == (1, [0, 1])
    assert state_layers(0, 2) == (0, [0])
    assert state_layers(-3, 2) == (0, [0])
    with pytest.raises(EngineDead, match="hidden_layer=3"):
        state_layers(3, 2)


def test_the_final_norm_is_transformers_rms_norm():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    torch.manual_seed(0)
    norm = Qwen2RMSNorm(16, eps=1e-6)
    norm.weight.data = torch.rand(16) + 0.5
    hidden = torch.randn(5, 16) * 3
    weights = ThinkerWeights(norm=norm.weight.data.clone(), eps=1e-6, special={})
    assert torch.allclose(weights.final_norm(hidden), norm(hidden), atol=1e-6, rtol=0)


def _states(n_prompt: int, n_reply: int, layers: int = 2, dim: int = 8) -> States:
    ids = list(range(100, 100 + n_prompt + n_reply))
    ids[3] = 7  # a media placeholder
    return States(ids, torch.randn(n_prompt + n_reply, layers, dim))


def test_a_bundle_splits_prompt_from_reply_and_marks_the_user_turn():
    from safetensors.torch import save

    states = _states(10, 3)
    prompt = OmniPrompt(token_ids=[], head=2, tail=3, extras={"image_grid_thw": torch.tensor([[1, 4, 4]])})
    weights = ThinkerWeights(norm=torch.ones(8) * 2, eps=1e-6, special={"tts_pad": torch.arange(8.0)})
    out = bundle(states, 3, prompt, 1, [0, 1], 1, [7], weights)
    assert out["prompt_ids"].tolist() == states.token_ids[:10] and out["reply_ids"].tolist() == states.token_ids[10:]
    assert torch.equal(out["prompt_embeds"], states.hidden[:10, 0]) and torch.equal(out["reply_embeds"], states.hidden[10:, 0])
    # Layer 1 of a one-layer thinker is its last: normed (weight 2 doubles the unit-RMS states).
    rms = states.hidden[:, 1].pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
    assert torch.allclose(out["prompt_hidden"], 2 * states.hidden[:10, 1] * rms[:10], atol=1e-6)
    assert out["prompt_mm_mask"].tolist() == [i == 3 for i in range(10)]
    assert out["prompt_user_mask"].tolist() == [2 <= i < 7 for i in range(10)]
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and out["embed.tts_pad"].tolist() == list(range(8))
    save(out)  # every tensor its own storage, as the tensor connector serializes them


def test_an_intermediate_layer_is_handed_off_as_extracted():
    states = _states(4, 0)
    out = bundle(states, 0, OmniPrompt(token_ids=[], head=1, tail=1), 1, [0, 1], 2, [7],
                 ThinkerWeights(norm=torch.ones(8), eps=1e-6, special={}))
    assert torch.equal(out["prompt_hidden"], states.hidden[:, 1])
    assert out["reply_hidden"].shape == (0, 8) and out["reply_ids"].tolist() == []


def test_the_extraction_engine_takes_its_own_engine_args():
    from omnijobs.engines.vllm.omni import _states_engine_args

    stage = load_registry().get("qwen2_5_omni").stages["thinker"]
    assert _states_engine_args(stage) == {}
    shared = stage.model_copy(update={"options": {"states_engine_args": {"gpu_memory_utilization": 0.3}}})
    assert _states_engine_args(shared) == {"gpu_memory_utilization": 0.3}
    wrong = stage.model_copy(update={"options": {"states_engine_args": {"gpu_memory_utilization": 3}}})
    with pytest.raises(EngineDead, match="states_engine_args"):
        _states_engine_args(wrong)
