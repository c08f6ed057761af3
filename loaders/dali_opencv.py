"""The CPU post-process after DALI's decoder: crop, resize, jitter, pad and normalise with OpenCV.

:class:`OpenCVPost` turns one user batch of native-size decoded frames into its video
tensor in a small thread pool (OpenCV releases the GIL, so it overlaps DALI's next
iteration). Invariant: a sample that cannot be post-processed is returned with its
reason, never half-written into the batch; the pool is closed between epochs.
Why OpenCV and not DALI's CPU ``fn.resize``: docs/design/dali.md.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from signstream import lookup
from signstream.loaders.batch import BufferPool, normalize_clip
from signstream.loaders.stages import Planned
from signstream.loaders.transform import PADS, Transform, emit_frame, resize_frame, size_mismatch


class OpenCVPost:
    """A thread pool post-processing DALI's decoded frames into batches.

    Args:
        transform: the loader's Transform.
        threads: the pool's size (the loader's decoder threads).
        buffers: where float batches are built (uint8 batches get a fresh array).
    """

    def __init__(self, transform: Transform, threads: int, buffers: BufferPool):
        self.transform, self.threads, self.buffers = transform, threads, buffers
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # per-thread frame and clip scratch buffers

    def __call__(
        self, group: list[Planned], outs: list, t: int
    ) -> tuple[torch.Tensor, list[Planned], list[tuple[Planned, str]]]:
        """The batch ``[B, 3, t, H, W]`` of the samples that worked, those samples, and the failed ones.

        Args:
            group: the planned samples of one user batch.
            outs: DALI's decoded frames for each (``[F, H, W, 3]`` uint8).
            t: the batch's frame count.
        """
        shape = (len(group), 3, t, *group[0].plan.out_hw)
        uint8 = self.transform.output == "uint8"
        video = np.empty(shape, np.uint8) if uint8 else self.buffers.get(shape)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads)
        jobs = [(p, np.asarray(out), video[j]) for j, (p, out) in enumerate(zip(group, outs))]
        reasons = list(self._pool.map(lambda job: self.post_sample(*job, t=t), jobs))
        good = [j for j, why in enumerate(reasons) if why is None]
        failed = [(group[j], why) for j, why in enumerate(reasons) if why is not None]
        if len(good) < len(group):
            video = video[good]
        tensor = torch.from_numpy(video)
        return (tensor.half() if self.transform.output == "float16" else tensor), [group[j] for j in good], failed

    def post_sample(self, p: Planned, frames: np.ndarray, dst: np.ndarray, *, t: int) -> str | None:
        """One sample's frames into its batch slot ``dst`` ([3, T, H, W]); the reason if it cannot be."""
        why = size_mismatch(p.plan, frames.shape[1], frames.shape[2])
        if why:
            return why
        unique, slots = p.plan.frame_slots()
        if len(frames) < len(unique):
            return f"DALI: {len(frames)} frames decoded, {len(unique)} planned"
        oh, ow = p.plan.out_hw
        local = self._local
        if getattr(local, "frame", None) is None or local.frame.shape != (oh, ow, 3):
            local.frame = np.empty((oh, ow, 3), np.uint8)
        if dst.dtype == np.uint8:
            clip = dst
        else:
            if getattr(local, "clip", None) is None or local.clip.shape != dst.shape:
                local.clip = np.empty(dst.shape, np.uint8)
            clip = local.clip
        for i, positions in enumerate(slots):
            resize_frame(frames[i], p.plan.box, p.plan.out_hw, local.frame)
            emit_frame(clip, positions, local.frame, p.plan)
        if p.plan.length < t:
            lookup(PADS, self.transform.pad, "pad mode")(clip, p.plan.length)
        if clip is not dst:
            mean, std = self.transform.mean_std()
            normalize_clip(clip, dst, mean, (1.0 / std).astype(np.float32))
        return None

    def close(self) -> None:
        """Stop the pool's threads (no idle threads left behind between epochs)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
