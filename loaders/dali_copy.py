"""DALI's outputs to torch: one user batch's per-sample outputs become one :class:`Batch`.

``dali`` postprocess: the outputs are copied into one tensor on the loader's device
(:func:`copy_out`); ``opencv``: they go through :class:`~signstream.loaders.dali_opencv.OpenCVPost`.
Invariant: on CUDA every copy is queued on the current stream, the host never waits for
it, and the lengths stay on the CPU.
"""

from __future__ import annotations

import torch

from signstream.loaders.batch import Batch, check_frame_sizes, mask_padding
from signstream.loaders.dali_opencv import OpenCVPost
from signstream.loaders.stages import Planned, SkipReport
from signstream.loaders.transform import Transform

DTYPES = {"float": torch.float32, "float16": torch.float16, "uint8": torch.uint8}


def copy_out(outs: list, shape: tuple[int, ...], dtype: torch.dtype, device_id: int | None) -> torch.Tensor:
    """DALI's per-sample outputs into one torch tensor.

    On CUDA the copies are queued on the current stream (the one the outputs
    were bound to by ``run``) and the host does not wait for them:
    ``feed_ndarray`` with a stream copies non-blocking, and the tensor, made
    by torch's allocator on that stream, is safe to use in stream order.

    Args:
        outs: one DALI output per sample (CPU or GPU tensors).
        shape: the batch's shape ``[B, C, T, H, W]``.
        dtype: the batch's dtype.
        device_id: the GPU the outputs are on, ``None`` on the CPU.
    """
    from nvidia.dali.plugin.pytorch import feed_ndarray

    if device_id is None:
        video = torch.empty(shape, dtype=dtype)
        for j, out in enumerate(outs):
            feed_ndarray(out, video[j])
        return video
    video = torch.empty(shape, dtype=dtype, device=torch.device("cuda", device_id))
    stream = torch.cuda.current_stream(device_id)
    for j, out in enumerate(outs):
        feed_ndarray(out, video[j], cuda_stream=stream)
    return video


class Assembler:
    """Builds one user batch from its samples' DALI outputs.

    Args:
        transform: the loader's Transform.
        device_id: the GPU the outputs are on, ``None`` on the CPU.
        post: the OpenCV post-process (``None``: the ``dali`` postprocess ran in the graph).
    """

    def __init__(self, transform: Transform, device_id: int | None, post: OpenCVPost | None):
        self.transform, self.device_id, self.post = transform, device_id, post

    def __call__(self, group: list[Planned], outs: list, skips: SkipReport, t: int | None = None) -> Batch | None:
        """The batch of ``group``; ``None`` if none of its samples could be delivered.

        Args:
            group: the planned samples of one user batch.
            outs: DALI's output for each.
            skips: where a sample that cannot be delivered is skipped and named.
            t: the batch's frame count (default: from the plans).
        """
        check_frame_sizes([p.plan.out_hw for p in group], [p.ref.key for p in group])
        t = t or self.transform.batch_frames(max(p.plan.length for p in group))
        if self.post is None:
            video = copy_out(
                outs, (len(group), 3, t, *group[0].plan.out_hw), DTYPES[self.transform.output], self.device_id
            )
        else:
            video, group, failed = self.post(group, outs, t)
            for p, why in failed:
                skips.skip(p.ref, why)
            if not group:
                return None
        skips.delivered()
        lengths = torch.tensor([p.plan.length for p in group], dtype=torch.int64)
        return Batch(video, lengths, [p.ref.key for p in group], [p.meta for p in group])


def finish_on_device(batch: Batch, transform: Transform) -> Batch:
    """A DALI batch is already on its device in its final dtype: only zero padding is left.

    The lengths stay on the CPU: copying them to the GPU would block the host.
    """
    if transform.pad == "zeros":
        mask_padding(batch.video, batch.lengths)
    return batch
