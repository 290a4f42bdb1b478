"""hf_dla: Dynamic Linear Attention for transformers.

Importing the package registers `DLAConfig` (`model_type="dla"`), `DLAModel` and `DLAForCausalLM` with
`AutoConfig`, `AutoModel` and `AutoModelForCausalLM`, and marks them for `register_for_auto_class`, so that
`save_pretrained` / `push_to_hub` write `auto_map` and the modeling files (`trust_remote_code=True` loading).

    >>> import hf_dla
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_config(hf_dla.DLAConfig(mixer="mamba2", memory="dla"))
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_dla import DLAConfig
from .convert import convert_mamba2, dla_config_from_mamba2, qwen3_next_gated_deltanet_state_dict
from .memory_plans import (
    MEMORY_PLANS,
    DynamicPlan,
    LogLinearPlan,
    MemoryPlan,
    PlanState,
    VanillaPlan,
    build_memory_plan,
)
from .modeling_dla import (
    DLACache,
    DLACacheLayer,
    DLAForCausalLM,
    DLAMemoryReport,
    DLAModel,
    DLAPreTrainedModel,
)
from .ops_dispatch import get_multistate_op

AutoConfig.register("dla", DLAConfig, exist_ok=True)
AutoModel.register(DLAConfig, DLAModel, exist_ok=True)
AutoModelForCausalLM.register(DLAConfig, DLAForCausalLM, exist_ok=True)
DLAConfig.register_for_auto_class()
DLAModel.register_for_auto_class("AutoModel")
DLAForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "DLACache",
    "DLACacheLayer",
    "DLAConfig",
    "DLAForCausalLM",
    "DLAMemoryReport",
    "DLAModel",
    "DLAPreTrainedModel",
    "DynamicPlan",
    "MEMORY_PLANS",
    "LogLinearPlan",
    "MemoryPlan",
    "PlanState",
    "VanillaPlan",
    "build_memory_plan",
    "convert_mamba2",
    "dla_config_from_mamba2",
    "get_multistate_op",
    "qwen3_next_gated_deltanet_state_dict",
]
