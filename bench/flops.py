"""FLOPs of one image through a fitted method, by component: the encoder (``method.timed_encoder()``, where
the method has one), the head (decoders, statistics or nearest-neighbour search) and the post-processing.

Each component is counted with PyTorch's own counter (``torch.utils.flop_counter``), which counts matrix
products and convolutions at 2 FLOPs per multiply-add and nothing else (elementwise operations,
interpolation, reductions and indexing are free to it). A method whose head is a distance computation
(kNN, Mahalanobis) gives the head by formula instead (``head_flop_formula``): the figure then does not
depend on how the distances happen to be computed, and the counter's figure stays beside it as a check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from anobench.records import Flops, FlopsComponent

COUNTER = "torch.utils.flop_counter"
COUNTER_SCOPE = ("matrix products and convolutions only, 2 FLOPs per multiply-add; elementwise operations, "
                 "interpolation and reductions are not counted")


def counted_flops(work: Callable[[], Any]) -> int:
    """FLOPs of ``work()`` as PyTorch's counter sees them."""
    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


@torch.no_grad()  # not inference_mode: the counter's module tracking hooks tensors that require grad
def count_flops(method, input_size: int, device: str, seed: int = 0) -> Flops:
    """FLOPs per image at ``input_size`` by component, each with how it was obtained (plain data)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, input_size, input_size, generator=generator).to(device)
    timed_encoder = method.timed_encoder()
    encoder = 0 if timed_encoder is None else counted_flops(lambda: timed_encoder(images))
    outputs = []
    network = counted_flops(lambda: outputs.append(method.forward_scores(images)))
    post = counted_flops(lambda: method.postprocess(outputs[0], (input_size, input_size)))
    head: FlopsComponent = {"flops": network - encoder, "counted_by": COUNTER}
    formula = method.head_flop_formula(input_size)
    if formula is not None:
        head = {"flops": int(sum(formula.values())), "counted_by": "formula", "terms": formula,
                "counter_flops": network - encoder}
    components: dict[str, FlopsComponent] = {} if timed_encoder is None else {
        "encoder": {"flops": encoder, "counted_by": COUNTER}}
    components[method.head_component] = head
    components["postprocess"] = {"flops": post, "counted_by": COUNTER}
    return {"input_size": input_size, "batch": 1, "unit": "FLOPs per image (a multiply-add is 2 FLOPs)",
            "counter_scope": COUNTER_SCOPE, "components": components,
            "total_flops": sum(c["flops"] for c in components.values())}


def flops_record(method, input_size: int, device: str, seed: int = 0) -> Flops:
    """``count_flops``, or an empty figure with the reason where it cannot be counted."""
    try:
        return count_flops(method, input_size, device, seed)
    except Exception as exc:  # a missing figure never fails the cell
        return {"input_size": input_size, "total_flops": None, "reason": f"{type(exc).__name__}: {exc}"}
