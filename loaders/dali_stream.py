"""Streaming one loader's DALI pipeline, and recovering from the iterations that fail.

:class:`DaliStream` runs the streaming pipeline over the groups its :class:`Feed` hands
out; a failed iteration's samples are retried one at a time in a small probe pipeline,
and the ones DALI refuses are skipped and named. Invariant: a decoder that cannot
decode at all is one :class:`SignstreamError` (after it fails the reference clip too),
never a split skipped sample by sample. Why recovery works this way: docs/design/dali.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from signstream import SignstreamError
from signstream.loaders.batch import Batch
from signstream.loaders.dali_pipeline import Feed, build_pipeline, sample_inputs
from signstream.loaders.dali_startup import (
    REFERENCE_SIDE,
    dali_reason,
    dead_decoder_error,
    reference_codec,
    reference_inputs,
)
from signstream.loaders.nvdec import nvdec_limits
from signstream.loaders.stages import Planned, SkipReport
from signstream.loaders.transform import Transform

# Samples in a row that may fail alone before the decoder itself is checked again (with the reference
# clip): bounds what a decoder dying mid-run costs (one probe build per sample) before it is one line.
PROBES_BEFORE_CHECK = 4


class DaliStream:
    """One loader's streaming pipeline, its probe pipeline and its decoder check.

    Args:
        names: the graph's inputs (:func:`~signstream.loaders.dali_pipeline.input_names`).
        postprocess: ``dali`` or ``opencv``.
        transform: the loader's Transform.
        num_threads: DALI's threads.
        device_id: the GPU decoding with NVDEC, ``None`` for DALI's CPU decoder.
        codecs: the shards' codecs (they choose the reference clip's).
        batch_size: user batch size.
        batches_per_run: user batches per DALI iteration.
        assemble: makes a user batch from a group, its outputs and the epoch's skips (``t=`` its frames).

    Nothing here refers back to the loader: between epochs the feed and the skip report are
    dropped, so a loader nobody holds is freed at once, pipelines included (not by a later
    garbage collection, which could run in a forked child).
    """

    def __init__(
        self,
        names: list[str],
        *,
        postprocess: str,
        transform: Transform,
        num_threads: int,
        device_id: int | None,
        codecs: set[str],
        batch_size: int,
        batches_per_run: int,
        assemble: Callable[..., Batch | None],
    ):
        self.names, self.postprocess, self.transform = names, postprocess, transform
        self.num_threads, self.device_id, self.codecs = num_threads, device_id, codecs
        self.run_size = batches_per_run * batch_size
        self.assemble = assemble
        self.skips: SkipReport | None = None  # the epoch's, while it runs
        self.feed = Feed(names, transform, batches_per_run)
        self.pipe = self.probe = None
        # Whether this decoder has decoded anything yet (an iteration or the reference clip),
        # and the samples that failed alone in a row since: see check_decoder.
        self.decodes, self.failed_probes = False, 0

    def batches(self, groups: Iterator[list[Planned]], skips: SkipReport) -> Iterator[Batch]:
        """The user batches of ``groups``, decoded by the streaming pipeline (built on first use).

        Args:
            groups: the epoch's planned user batches.
            skips: the epoch's skip report (samples DALI refuses are skipped and named there).
        """
        self.skips = skips
        self.feed.start(groups)
        if self.pipe is None:
            self.pipe = self.build(self.run_size, self.feed)
        return self._stream()

    def finish(self, clean: bool) -> None:
        """After an epoch: reset the pipeline if it reached the end, else drop it (iterations still queued)."""
        self.feed.start(iter(()))
        self.skips = None
        if clean:
            self.pipe.reset()
        else:
            self.pipe = None

    def build(self, batch_size: int, source: Callable | None):
        """A pipeline of ``batch_size`` samples per run, streaming from ``source`` or fed by name."""
        try:
            return build_pipeline(
                self.names,
                postprocess=self.postprocess,
                transform=self.transform,
                batch_size=batch_size,
                num_threads=self.num_threads,
                device_id=self.device_id,
                source=source,
            )
        except RuntimeError as exc:  # no pipeline at all: no sample could ever decode
            raise SignstreamError(
                dead_decoder_error([exc], self.device_id, stage=" (building DALI's pipeline)")
            ) from None

    def _stream(self) -> Iterator[Batch]:
        while True:
            # the caller's stream at this iteration (it may switch streams between batches)
            stream = torch.cuda.current_stream(self.device_id) if self.device_id is not None else None
            try:
                (out,) = self.pipe.run(stream) if stream is not None else self.pipe.run()
            except StopIteration:
                return
            except RuntimeError as exc:
                if not self.feed.inflight:
                    raise SignstreamError(f"DALI pipeline failed: {dali_reason(exc)}") from None
                if not self.decodes:  # nothing decoded yet: a dead decoder fails here, once
                    self.check_decoder(exc)
                for group in self.feed.inflight.popleft():
                    batch = self.recover(group)
                    if batch is not None:
                        yield batch
                continue
            self.decodes, self.failed_probes = True, 0
            run = self.feed.inflight.popleft()
            starts = np.cumsum([0] + [len(group) for group in run]).tolist()
            batches: Iterator[Batch | None] | list[Batch | None] = (
                self.assemble(group, [out[s + j] for j in range(len(group))], self.skips)
                for group, s in zip(run, starts)
            )
            if stream is not None:
                # Copy the whole iteration now, on the stream DALI bound its outputs to: once
                # ``out`` is released DALI reuses its memory in that stream's order, so a later
                # copy on another stream (the caller's next one) could read reused memory.
                batches = list(batches)
                del out
            yield from (batch for batch in batches if batch is not None)

    def recover(self, group: list[Planned]) -> Batch | None:
        """Decode a failed group's samples one at a time; skip (and name) the ones DALI refuses."""
        t = self.transform.batch_frames(max(p.plan.length for p in group))
        good, outs = [], []
        for p in group:
            if self.probe is None:
                self.probe = self.build(1, None)
            try:
                result = self._run_probe(sample_inputs(p, t))
            except RuntimeError as exc:
                self.probe = None  # do not trust a pipeline that just failed
                self.failed_probes += 1
                if self.failed_probes >= PROBES_BEFORE_CHECK:  # many in a row: is the decoder dead?
                    self.check_decoder(exc)
                self.skips.skip(p.ref, dali_reason(exc))
                continue
            self.failed_probes = 0
            good.append(p)
            outs.append(result)  # keeps the output alive until it is copied
        if not good:
            return None
        return self.assemble(good, [result[0][0] for result in outs], self.skips, t=t)

    def _run_probe(self, inputs: dict[str, np.ndarray]):
        """One sample through the probe pipeline (outputs on the current stream on CUDA)."""
        stream = torch.cuda.current_stream(self.device_id) if self.device_id is not None else None
        return self.probe.run(stream, **{n: [inputs[n]] for n in self.names})

    def check_decoder(self, failure: RuntimeError) -> None:
        """Raise the one line for a dead decoder unless it decodes the reference clip.

        Called when an iteration fails before anything was decoded, and after
        :data:`PROBES_BEFORE_CHECK` samples in a row failed alone: a corrupt
        video fails by itself, a decoder that cannot start (no libnvcuvid, no
        NVDEC engine, no memory) fails the reference clip too. Leaves a working
        probe pipeline behind, so the check costs no extra build.
        """
        codec = reference_codec(self.codecs, cuda=self.device_id is not None)
        side = REFERENCE_SIDE
        if self.device_id is not None:  # at least the GPU's smallest frame, in whole macroblocks
            (min_h, min_w), _ = nvdec_limits(codec, self.device_id) or ((side, side), None)
            side = -(-max(side, min_h, min_w) // 16) * 16
        self.probe = self.build(1, None)
        try:
            self._run_probe(reference_inputs(codec, side, side))
        except RuntimeError as exc:
            self.probe = None
            raise SignstreamError(
                dead_decoder_error([failure, exc], self.device_id, stage=", even for a reference clip")
            ) from None
        self.decodes, self.failed_probes = True, 0
