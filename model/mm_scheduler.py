"""vLLM scheduler that never splits a multimodal item across prefill steps.

vLLM's `disable_chunked_mm_input=True` is meant to guarantee that, but vLLM 0.29 only rolls a
step back when it *starts before* the item (`num_computed_tokens < start_pos`). A step that starts
exactly at the item (typically the step right after such a roll-back) or inside it (prefix-cache
hit ending inside an image) can still end in the middle of the item when the token budget is
short. Bidirectional image attention needs every key of an image in the step that computes its
queries (model/cpu_bidirectional.py), so such a split must not happen: this scheduler shortens
the step to end before the item, or schedules nothing for the request this step when it already
started inside it (it continues once the budget covers the rest, which vLLM guarantees fits:
an item never exceeds `max_num_batched_tokens` when chunked mm input is disabled).

Selected with `scheduler_cls=SCHEDULER_CLS` (model.engine.EngineConfig does so on CPU for
bidirectional-vision checkpoints). Subclasses vLLM's synchronous `Scheduler`, the one the CPU
platform uses (it turns async scheduling off).
"""

from __future__ import annotations

from vllm.v1.core.sched.scheduler import Scheduler

SCHEDULER_CLS = "model.mm_scheduler.WholeMultimodalItemScheduler"


def steps_without_split(
    item_ranges: list[tuple[int, int]], num_computed_tokens: int, num_new_tokens: int
) -> int:
    """Largest prefix of the step [computed, computed + new) that ends outside every item.

    Items are (offset, length) placeholder ranges of the prompt.
    """
    end = num_computed_tokens + num_new_tokens
    for offset, length in sorted(item_ranges):
        item_end = offset + length
        if offset < end < item_end and num_computed_tokens < item_end:
            # The step would stop inside this item: stop before it, or not at all this step.
            end = max(offset, num_computed_tokens)
    return end - num_computed_tokens


class WholeMultimodalItemScheduler(Scheduler):
    def _try_schedule_encoder_inputs(
        self,
        request,
        num_computed_tokens: int,
        num_new_tokens: int,
        encoder_compute_budget: int,
        shift_computed_tokens: int = 0,
    ):
        if self.scheduler_config.disable_chunked_mm_input and request.mm_features:
            ranges = [(f.mm_position.offset, f.mm_position.length) for f in request.mm_features]
            num_new_tokens = steps_without_split(ranges, num_computed_tokens, num_new_tokens)
        return super()._try_schedule_encoder_inputs(
            request, num_computed_tokens, num_new_tokens, encoder_compute_budget, shift_computed_tokens
        )
