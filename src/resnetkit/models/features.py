"""Multi-scale features for detection and segmentation heads: which stage outputs a net gives, and the
checks on `out_indices`.

A ResNet's `feature_info` lists its stages in order: index 0 is the root conv's output (before the root
pool: stride 2 on ImageNet roots, 1 on CIFAR's), index i the output of block i. Each entry says
`num_chs` (channels), `reduction` (input size / feature size, with `output_stride` in force), `module`
(where it lives in the state dict) and `end_point` (its TF-slim end point name, as
`forward_end_points` returns it). timm numbers its `feature_info` the same way, so
`out_indices=(1, 2, 3, 4)` means the four blocks of an ImageNet ResNet in both libraries.
"""

from __future__ import annotations

from collections.abc import Sequence


class FeatureInfo(list):
    """A list of per-stage dicts (`num_chs`, `reduction`, `module`, `end_point`) with column accessors."""

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self]

    def reductions(self) -> list[int]:
        return [d["reduction"] for d in self]

    def end_points(self) -> list[str]:
        return [d["end_point"] for d in self]


def check_out_indices(out_indices: Sequence[int] | None, num_stages: int) -> tuple[int, ...]:
    """`out_indices` as a tuple of valid feature_info indices; None means every block (1 .. n-1).

    `num_stages` counts the root too (5 for ImageNet ResNets, 4 for CIFAR ones). Indices must be distinct
    and increasing, as the forward produces them in that order.
    """
    if out_indices is None:
        return tuple(range(1, num_stages))
    if isinstance(out_indices, int) or not all(isinstance(i, int) and not isinstance(i, bool)
                                               for i in out_indices):
        raise ValueError(f"out_indices must be a sequence of ints, got {out_indices!r}")
    idx = tuple(out_indices)
    if not idx:
        raise ValueError("out_indices is empty: name at least one stage")
    bad = [i for i in idx if not 0 <= i < num_stages]
    if bad:
        raise ValueError(f"out_indices {idx}: {bad} out of range; this net has stages 0..{num_stages - 1} "
                         f"(0 the root, 1..{num_stages - 1} its blocks)")
    if list(idx) != sorted(set(idx)):
        raise ValueError(f"out_indices {idx}: must be increasing and distinct")
    return idx
