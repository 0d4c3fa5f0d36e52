"""A MobileNet-style space in which FLOPs and measured latency disagree.

Three stages of blocks. A stage with ``expand == 1`` is depthwise-separable
(MobileNetV1); otherwise it is an inverted residual (MobileNetV2). Squeeze-excite,
hard-swish and large depthwise kernels add latency out of proportion to their FLOPs
at batch 1, and each extra block adds per-operator overhead that FLOPs do not see.
That is the point of measuring: ranking by FLOPs mis-ranks these candidates.

Stage depth 0 removes a stage (stage 1 always exists). The space is kept flat on
purpose: see ``docs/design.md`` for why Ax's dependent parameters were not used.
"""

from __future__ import annotations

from odnas.spaces import register_space
from odnas.spaces.base import Choice, Params, Range, Space

WIDTHS = (8, 12, 16, 24, 32)
STAGES = 3


def _stage_specs(i: int) -> tuple:
    return (
        Choice(f"s{i}_depth", (1, 2, 3, 4) if i == 1 else (0, 1, 2, 3, 4), ordered=True),
        Choice(f"s{i}_width", WIDTHS, ordered=True),
        Choice(f"s{i}_kernel", (3, 5, 7), ordered=True),
        Choice(f"s{i}_expand", (1, 2, 4), ordered=True),
        Choice(f"s{i}_se", (0, 1), ordered=True),
    )


@register_space
class MobileCNNSpace(Space):
    name = "mobile-cnn"
    description = "MobileNet-style CNN: per-stage depth/width/kernel/expansion/SE, activation, training"
    specs = (
        Choice("stem_width", (8, 16, 24, 32), ordered=True),
        *(s for i in range(1, STAGES + 1) for s in _stage_specs(i)),
        Choice("hardswish", (0, 1), ordered=True),
        Range("lr", 1e-3, 3e-2, "float", log=True),
        Range("epochs", 1, 4, "int"),
        Choice("batch_size", (32, 64, 128), ordered=True),
    )

    def stages(self, params: Params) -> list[dict]:
        out = []
        for i in range(1, STAGES + 1):
            depth = int(params.get(f"s{i}_depth", 0))
            if depth:
                out.append({
                    "depth": depth, "width": int(params[f"s{i}_width"]),
                    "kernel": int(params[f"s{i}_kernel"]), "expand": int(params[f"s{i}_expand"]),
                    "se": bool(params[f"s{i}_se"]), "stride": 1 if i == 1 else 2,
                })
        return out

    def arch_id(self, params: Params) -> str:
        act = "hs" if params["hardswish"] else "re"
        blocks = "_".join(
            f"e{s['expand']}k{s['kernel']}c{s['width']}d{s['depth']}{'se' if s['se'] else ''}"
            for s in self.stages(params)
        )
        return f"mcnn_s{int(params['stem_width'])}{act}_{blocks}"

    def build(self, params: Params, input_shape, num_classes: int):
        from odnas.spaces._blocks import MobileCNN

        return MobileCNN(
            in_channels=int(input_shape[0]), input_hw=int(input_shape[-1]),
            stem_width=int(params["stem_width"]), stages=self.stages(params),
            activation="hardswish" if params["hardswish"] else "relu", num_classes=num_classes,
        )
