"""MobileNet-style 1-D multi-exit network (depthwise-separable convolutions): three exits.

For small devices: depthwise-separable blocks cost a fraction of the MACs of full convolutions.
Channels 24, 48, 96 at width 1.0 on lengths 64, 32, 16 (after a stride-2 stem and stride-2 stages).
"""

from __future__ import annotations

from torch import nn

from edgeexit.models.base import InputNorm, ModelConfig, MultiExitNet
from edgeexit.models.layers import (
    DepthwiseSeparable1d,
    ExitHead,
    conv_bn_act,
    early_exit_head,
    scaled,
)
from edgeexit.models.registry import register_model


def build_mobilenet1d(
    config: ModelConfig, widths: tuple[int, int, int] = (24, 48, 96), blocks: int = 2
) -> MultiExitNet:
    """A 3-stage depthwise-separable 1-D network with an exit after every stage.

    Args:
        config: input channels, classes, width multiplier.
        widths: output channels of each stage at width 1.0.
        blocks: depthwise-separable blocks per stage.
    """
    chans = [scaled(w, config.width) for w in widths]
    stem_c = scaled(widths[0] // 2, config.width)
    stage0 = [
        InputNorm(config.in_channels, config.signal_channels),
        conv_bn_act(config.in_channels, stem_c, 5, stride=2, act=nn.ReLU6),  # [N, s, L/2]
        DepthwiseSeparable1d(stem_c, chans[0], stride=2),  # [N, c0, L/4]
    ]
    stage0 += [DepthwiseSeparable1d(chans[0], chans[0]) for _ in range(blocks - 1)]
    stages: list[nn.Module] = [nn.Sequential(*stage0)]
    for k in range(1, 3):
        layers = [DepthwiseSeparable1d(chans[k - 1], chans[k], stride=2)]  # [N, ck, L/2^(k+2)]
        layers += [DepthwiseSeparable1d(chans[k], chans[k]) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
    heads = [
        early_exit_head(config.exit_heads, c, config.num_classes, pool=2 ** (2 - k))
        for k, c in enumerate(chans[:-1])
    ]
    heads.append(ExitHead(chans[-1], config.num_classes))
    return MultiExitNet(stages, heads, config)


@register_model("mobilenet1d", "1-D MobileNet (depthwise-separable), 3 exits: the small-device pick")
def mobilenet1d(config: ModelConfig) -> MultiExitNet:
    return build_mobilenet1d(config)


@register_model("test_mobilenet1d", "tiny 1-D MobileNet (3 exits, 1 block/stage) for tests")
def test_mobilenet1d(config: ModelConfig) -> MultiExitNet:
    return build_mobilenet1d(config, widths=(8, 12, 16), blocks=1)
