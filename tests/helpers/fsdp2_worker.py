"""FSDP2 on CPU/gloo: shard each MiniTransformer layer, train, gather a full state dict, save_pretrained, reload.

    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 tests/helpers/fsdp2_worker.py OUT_DIR

accelerate's FSDP plugin falls back to DDP on CPU (../shared/DISTRIBUTED.md), so this drives torch's `fully_shard`
directly, wrapping the layer class that configs/accelerate/fsdp_8gpu.yaml names. Every rank also trains an unsharded
copy on the global batch as the reference. Rank 0 writes `OUT_DIR/result.json` with the measured differences.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hf_minitransformer import MiniTransformerForCausalLM, modeling_minitransformer


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # a launched script: the tests' package is importable only from the checkout
from tests.conftest import make_config  # noqa: E402


STEPS, BATCH_PER_RANK, SEQ = 3, 2, 16


def max_difference(first: dict, second: dict) -> float:
    return max((first[name].float() - second[name].float()).abs().max().item() for name in first)


def main():
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    fsdp_config = yaml.safe_load((ROOT / "configs/accelerate/fsdp_8gpu.yaml").read_text())["fsdp_config"]
    layer_class = getattr(modeling_minitransformer, fsdp_config["fsdp_transformer_layer_cls_to_wrap"])

    torch.manual_seed(0)  # the same initial weights on every rank
    config = make_config(intermediate_size=64, is_decoder=True)
    reference = MiniTransformerForCausalLM(config)
    model = copy.deepcopy(reference)
    layers = [module for module in model.modules() if isinstance(module, layer_class)]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)  # the root holds the rest: embeddings (tied to lm_head) and final norm
    sharded = all(isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0] for p in layers[0].parameters()
                  if p.dim() == 2)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        global_batch = torch.randint(0, 99, (BATCH_PER_RANK * world, SEQ), generator=generator)
        local_batch = global_batch[rank * BATCH_PER_RANK : (rank + 1) * BATCH_PER_RANK]
        model(input_ids=local_batch, labels=local_batch).loss.backward()  # FSDP averages gradients over ranks
        optimizer.step()
        optimizer.zero_grad()
        reference(input_ids=global_batch, labels=global_batch).loss.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    # Every rank joins the gather; the full tensors land on CPU.
    full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    result = {"sharded": sharded, "num_layers_wrapped": len(layers), "layer_class": layer_class.__name__}
    if rank == 0:
        result["trained_vs_reference"] = max_difference(full_state, reference.state_dict())
        unsharded = MiniTransformerForCausalLM(config)
        unsharded.save_pretrained(out_dir / "model", state_dict=full_state)
        reloaded = MiniTransformerForCausalLM.from_pretrained(out_dir / "model").eval()
        result["reloaded_vs_reference"] = max_difference(reloaded.state_dict(), reference.state_dict())
        probe = torch.randint(0, 99, (2, SEQ), generator=generator)
        with torch.no_grad():
            logits = reloaded(input_ids=probe).logits - reference.eval()(input_ids=probe).logits
        result["logits_difference"] = logits.abs().max().item()
        (out_dir / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
