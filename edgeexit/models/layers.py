"""Small 1-D building blocks shared by the model families."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 4 (at least 4): friendly to SIMD kernels."""
    return max(4, int(round(channels * width / 4.0)) * 4)


def conv_bn_act(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU
) -> nn.Sequential:
    """Conv1d (no bias) + BatchNorm1d + activation, 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm1d(c_out),
        act(),
    )


class BasicBlock1d(nn.Module):
    """ResNet basic block for 1-D signals: two convolutions and a (projected) shortcut.

    Shape:
        ``[N, c_in, L] -> [N, c_out, ceil(L / stride)]``
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, stride: int = 1) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)
            )

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))  # [N, c_out, L']
        h = self.bn2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class DepthwiseSeparable1d(nn.Sequential):
    """MobileNet-v1 block: depthwise conv + BN + ReLU6, then pointwise conv + BN + ReLU6.

    Shape:
        ``[N, c_in, L] -> [N, c_out, ceil(L / stride)]``
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, stride: int = 1) -> None:
        super().__init__(
            conv_bn_act(c_in, c_in, kernel, stride=stride, groups=c_in, act=nn.ReLU6),
            conv_bn_act(c_in, c_out, 1, act=nn.ReLU6),
        )


class ExitHead(nn.Sequential):
    """An exit classifier: optional conv adapter, global average pooling, linear layer.

    Early exits get a small convolutional adapter (their features are not yet class-specific,
    SDN-style), run on a time axis first shortened ``pool`` times; the final exit is the usual
    pooling + linear head.

    Shape:
        ``[N, C, L] -> [N, num_classes]``
    """

    def __init__(
        self, c_in: int, num_classes: int, hidden: int | None = None, pool: int = 1
    ) -> None:
        layers: list[nn.Module] = []
        c = c_in
        if hidden:
            if pool > 1:  # shrink the time axis first: keeps early heads cheap next to the stages
                layers.append(nn.AvgPool1d(pool))
            layers.append(conv_bn_act(c_in, hidden, 3))
            c = hidden
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, num_classes)]
        super().__init__(*layers)


def early_exit_head(kind: str, c_in: int, num_classes: int, pool: int) -> ExitHead:
    """An early exit of kind ``conv`` (adapter to ``c_in // 2`` channels after pooling the time
    axis ``pool`` times) or ``linear`` (pooling + linear only); see ``ModelConfig.exit_heads``."""
    if kind == "linear":
        return ExitHead(c_in, num_classes)
    return ExitHead(c_in, num_classes, hidden=c_in // 2, pool=pool)
