"""Learning-rate schedules shared by the training recipes."""

from __future__ import annotations

import math
from collections.abc import Callable


# Kept instead of SequentialLR(LinearLR, CosineAnnealingLR): over whole schedules (300/100, 60/5,
# 1000/50 steps/warm-up) torch's pair gives the same learning rates to within 2e-18, but it cannot
# express warmup_steps=0 (LinearLR divides by zero), its cosine climbs back up after `total`
# where ours stays at 0, and a scheduler of another class would not load our saved checkpoints.
def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """``LambdaLR`` factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
