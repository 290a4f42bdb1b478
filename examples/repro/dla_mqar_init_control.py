"""The read-weight initialisation control of RESULTS.md (MQAR, three seeds): `examples.repro.dla_mqar` unchanged, except
that the read-weight projection starts at W ~ N(0, initializer_range) drawn from its own generator instead of W = 0.
Every other parameter and the data are then identical to the zero-init run of the same seed, so a difference in
recall comes from the spread of lambda at initialisation alone (not from another random draw of the model).

    python -m examples.repro.dla_mqar_init_control --config examples/recipes/dla_mqar.yaml --mixers gated_deltanet \
        --memories loglinear --seeds 0 1 2 --output_dir runs/dla_mqar_spreadinit
    python -m examples.repro.dla_mqar --summarize --output_dir runs/dla_mqar_spreadinit

(`DLAConfig(read_weights_init_std=...)` gives the same spread in models of your own, drawn from the global RNG.)
"""

import torch

from examples.repro import dla_mqar
from hf_dla import modeling_dla

SEPARATE_SEED = 12345
_zero_init = modeling_dla.DLAPreTrainedModel._init_weights
_generator = torch.Generator().manual_seed(SEPARATE_SEED)


@torch.no_grad()
def _spread_read_weights_init(self, module):
    _zero_init(self, module)
    if isinstance(module, modeling_dla.DLAMemoryReadWeights):
        weight = module.proj.weight
        weight.copy_(torch.randn(weight.shape, generator=_generator) * self.config.initializer_range)


if __name__ == "__main__":
    modeling_dla.DLAPreTrainedModel._init_weights = _spread_read_weights_init
    dla_mqar.main()
