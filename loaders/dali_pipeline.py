"""The DALI decode graph and its feed: per-sample inputs in, decoded (and transformed) clips out.

:func:`build_pipeline` makes one graph: ``external_source`` -> ``decoders.video`` on the
planned frames -> (``dali`` postprocess) the Transform as DALI operators -> ``[C, T, H, W]``.
:class:`Feed` is its source callback: one call, one DALI iteration of several user batches.
Invariant: the graph's inputs are exactly :func:`input_names`, in :data:`INPUTS` order, and
:class:`Feed` keeps every iteration it handed out until it is consumed, in DALI's order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np

from signstream.loaders.stages import Planned
from signstream.loaders.transform import Transform

PREFETCH_RUNS = 2  # DALI iterations decoded ahead of the one being consumed

# name -> (DALI type, ndim) of every per-sample input, by postprocess
INPUTS = {
    "encoded": ("UINT8", 1),
    "frames": ("INT32", 1),
    "order": ("INT32", 1),
    "roi_start": ("FLOAT", 1),
    "roi_end": ("FLOAT", 1),
    "size": ("FLOAT", 1),
    "mirror": ("INT32", 0),
    "jitter": ("FLOAT", 1),
}


def dali_postprocess(video, order, roi_start, roi_end, size, mirror, jitter, *, transform: Transform):
    """The Transform as DALI operators on decoded frames (plain function on data nodes)."""
    from nvidia.dali import fn, types

    video = fn.resize(
        video,
        size=size,
        roi_start=roi_start,
        roi_end=roi_end,
        roi_relative=False,
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
    if jitter is not None:
        video = fn.brightness_contrast(video, brightness=jitter[0], contrast=jitter[1], contrast_center=128.0)
        video = fn.color_twist(video, saturation=jitter[2])
    video = fn.sequence_rearrange(video, new_order=order)  # repeats + padding to the batch's T
    if transform.output != "uint8":
        mean, std = transform.mean_std()
        dtype = types.FLOAT16 if transform.output == "float16" else types.FLOAT
        return fn.crop_mirror_normalize(
            video, mirror=mirror, mean=mean.tolist(), std=std.tolist(), dtype=dtype, output_layout="CFHW"
        )
    video = fn.flip(video, horizontal=mirror)
    return fn.transpose(video, perm=[3, 0, 1, 2], output_layout="CFHW")


def input_names(postprocess: str, transform: Transform) -> list[str]:
    """The per-sample inputs the graph of ``postprocess`` takes."""
    if postprocess == "opencv":
        return ["encoded", "frames"]
    names = [n for n in INPUTS if n != "jitter"]
    return names + ["jitter"] if transform.colour_jitter > 0 else names


def build_pipeline(
    names: list[str],
    *,
    postprocess: str,
    transform: Transform,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    source: Callable | None = None,
):
    """The decode pipeline, built.

    Args:
        names: its inputs (:func:`input_names`).
        postprocess: ``dali`` (the Transform as DALI operators) or ``opencv`` (native-size frames).
        transform: the loader's Transform.
        batch_size: samples per DALI iteration.
        num_threads: DALI's CPU threads.
        device_id: the GPU decoding with NVDEC (``mixed``), ``None`` for DALI's CPU decoder.
        source: a batch callback to stream from (:class:`Feed`); ``None``: fed by name on each ``run``.
    """
    from nvidia.dali import fn, pipeline_def, types

    dtypes = [getattr(types, INPUTS[n][0]) for n in names]
    ndims = [INPUTS[n][1] for n in names]

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=PREFETCH_RUNS if source is not None else 1,
        exec_dynamic=True,
    )
    def decode():
        if source is not None:
            nodes = fn.external_source(source=source, num_outputs=len(names), batch=True, dtype=dtypes, ndim=ndims)
        else:
            nodes = [fn.external_source(name=n, dtype=t, ndim=d) for n, t, d in zip(names, dtypes, ndims)]
        inputs = dict(zip(names, nodes))
        video = fn.decoders.video(
            inputs["encoded"],
            frames=inputs["frames"],
            pad_mode="none",
            device="mixed" if device_id is not None else "cpu",
        )
        if postprocess == "opencv":
            return video
        return dali_postprocess(video, *(inputs.get(n) for n in list(INPUTS)[2:]), transform=transform)

    pipe = decode()
    pipe.build()
    return pipe


def sample_inputs(p: Planned, t: int) -> dict[str, np.ndarray]:
    """One sample's graph inputs; ``t`` is its batch's T (the order is padded to it)."""
    unique, order = p.plan.unique_frames()
    y0, x0, h, w = p.plan.box
    return {
        "encoded": np.frombuffer(p.data, np.uint8),
        "frames": unique.astype(np.int32),
        "order": np.pad(order, (0, t - len(order)), mode="edge").astype(np.int32),
        "roi_start": np.array([y0, x0], np.float32),
        "roi_end": np.array([y0 + h, x0 + w], np.float32),
        "size": np.array(p.plan.out_hw, np.float32),
        "mirror": np.array(int(p.plan.flip), np.int32),
        "jitter": np.array(p.plan.jitter or (1.0, 1.0, 1.0), np.float32),
    }


class Feed:
    """The source callback: each call returns the next DALI iteration (several user batches).

    The groups handed to DALI and not yet consumed are kept in order in
    ``inflight`` (DALI returns iterations in the order it asked for them).
    """

    def __init__(self, names: list[str], transform: Transform, per_run: int):
        self.names, self.transform, self.per_run = names, transform, per_run
        self.groups: Iterator[list[Planned]] = iter(())
        self.inflight: deque[list[list[Planned]]] = deque()

    def start(self, groups: Iterator[list[Planned]]) -> None:
        """Feed ``groups`` from now on, forgetting any iteration still in flight."""
        self.groups = groups
        self.inflight.clear()

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        run = list(islice(self.groups, self.per_run))
        if not run:
            raise StopIteration
        self.inflight.append(run)
        columns: tuple[list[np.ndarray], ...] = tuple([] for _ in self.names)
        for group in run:
            t = self.transform.batch_frames(max(p.plan.length for p in group))
            for p in group:
                inputs = sample_inputs(p, t)
                for column, name in zip(columns, self.names):
                    column.append(inputs[name])
        return columns
