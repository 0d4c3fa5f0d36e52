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

from odnas.spaces.base import Choice, Params, Range, Space

WIDTHS = (8, 12, 16, 24, 32)
STAGES = 3
#: Per-stage block settings; the compact space shares them across stages.
BLOCK_SPECS = {
    "kernel": lambda name: Choice(name, (3, 5, 7), ordered=True),
    "expand": lambda name: Choice(name, (1, 2, 4), ordered=True),
    "se": lambda name: Choice(name, (0, 1), ordered=True),
}
TRAINING_SPECS = (
    Range("lr", 1e-3, 3e-2, "float", log=True),
    Range("epochs", 1, 4, "int"),
    Choice("batch_size", (32, 64, 128), ordered=True),
)


def _specs(per_stage_blocks: bool) -> tuple:
    out = [Choice("stem_width", (8, 16, 24, 32), ordered=True)]
    for i in range(1, STAGES + 1):
        out.append(Choice(f"s{i}_depth", (1, 2, 3, 4) if i == 1 else (0, 1, 2, 3, 4), ordered=True))
        out.append(Choice(f"s{i}_width", WIDTHS, ordered=True))
        if per_stage_blocks:
            out += [make(f"s{i}_{key}") for key, make in BLOCK_SPECS.items()]
    if not per_stage_blocks:
        out += [make(key) for key, make in BLOCK_SPECS.items()]
    out.append(Choice("hardswish", (0, 1), ordered=True))
    return (*out, *TRAINING_SPECS)


class MobileCNNSpace(Space):
    """Per-stage depth and width; kernel, expansion and squeeze-excite shared by all
    stages (14 parameters: Bayesian optimisation stays at a few seconds a candidate)."""

    name = "mobile-cnn"
    description = "MobileNet-style CNN: per-stage depth/width; kernel, expansion, SE, activation; training"
    specs = _specs(per_stage_blocks=False)

    def smallest(self, fixed=None) -> dict | None:
        """Every parameter grows the model with its value, but one: a stage halves the
        resolution whether or not the stage before it exists, so with stage 3 held
        present, a present stage 2 can make stage 3 cheaper. There the cheapest member
        is not known without measuring, and the up-front budget check is skipped."""
        fixed = fixed or {}
        if fixed.get(f"s{STAGES}_depth") and "s2_depth" not in fixed:
            return None
        return self.lowest(fixed)

    def stages(self, params: Params) -> list[dict]:
        out = []
        for i in range(1, STAGES + 1):
            depth = int(params.get(f"s{i}_depth", 0))
            if depth:
                block = {k: int(params.get(f"s{i}_{k}", params.get(k, 0))) for k in BLOCK_SPECS}
                out.append({"depth": depth, "width": int(params[f"s{i}_width"]), "kernel": block["kernel"],
                            "expand": block["expand"], "se": bool(block["se"]), "stride": 1 if i == 1 else 2})
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


class MobileCNNXLSpace(MobileCNNSpace):
    """Every stage has its own kernel, expansion and squeeze-excite: 20 parameters,
    for high-dimensional methods such as SAASBO (``--method saasbo``)."""

    name = "mobile-cnn-xl"
    description = "mobile-cnn with per-stage kernel/expansion/SE (20 parameters)"
    specs = _specs(per_stage_blocks=True)
