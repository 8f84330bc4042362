"""ResNet-style 1-D multi-exit network for ECG beats: four stages, four exits.

Sized for 256-sample beat windows at 360 Hz: the stem reduces the length four times (256 -> 64),
then each stage halves it (64 -> 32 -> 16 -> 8) and doubles the channels (16, 32, 64, 128 at
width 1.0).
"""

from __future__ import annotations

from torch import nn

from edgeexit.models.base import InputNorm, ModelConfig, MultiExitNet
from edgeexit.models.layers import BasicBlock1d, ExitHead, conv_bn_act, early_exit_head, scaled
from edgeexit.models.registry import register_model


def build_resnet1d(config: ModelConfig, base: int = 16, blocks_per_stage: int = 1) -> MultiExitNet:
    """A 4-stage 1-D ResNet with an exit after every stage.

    Args:
        config: input channels, classes, width multiplier.
        base: channels of the first stage at width 1.0 (doubled every stage).
        blocks_per_stage: basic blocks per stage after the first.
    """
    chans = [scaled(base * 2**k, config.width) for k in range(4)]
    stem = nn.Sequential(
        InputNorm(config.in_channels, config.signal_channels),
        conv_bn_act(config.in_channels, chans[0], 7, stride=2),  # [N, c0, L/2]
        nn.MaxPool1d(2),  # [N, c0, L/4]: ECG at 360 Hz is oversampled for beat morphology
        BasicBlock1d(chans[0], chans[0]),
    )
    stages: list[nn.Module] = [stem]
    for k in range(1, 4):
        blocks = [BasicBlock1d(chans[k - 1], chans[k], stride=2)]  # [N, ck, L/2^(k+1)]
        blocks += [BasicBlock1d(chans[k], chans[k]) for _ in range(blocks_per_stage - 1)]  # same shape
        stages.append(nn.Sequential(*blocks))
    heads = [
        early_exit_head(config.exit_heads, c, config.num_classes, pool=max(1, 2 ** (2 - k)))
        for k, c in enumerate(chans[:-1])
    ]
    heads.append(ExitHead(chans[-1], config.num_classes))
    return MultiExitNet(stages, heads, config)


@register_model("resnet1d", "1-D ResNet, 4 stages/exits: the accurate default")
def resnet1d(config: ModelConfig) -> MultiExitNet:
    return build_resnet1d(config)


@register_model("test_resnet1d", "tiny 1-D ResNet (4 exits, 1 block/stage) for tests")
def test_resnet1d(config: ModelConfig) -> MultiExitNet:
    return build_resnet1d(config, base=4, blocks_per_stage=1)
