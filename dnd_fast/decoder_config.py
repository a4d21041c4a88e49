"""DecoderConfig: the hyper-convolutional decoder's shape (a cascade of (channels, height, width)
features and the conv kernel size), serialised inside every generator checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

Feature = tuple[int, int, int]
_PAPER_QWEN05 = ((128, 384, 384), (128, 200, 300), (128, 100, 256), (256, 50, 200), (512, 50, 200),
                 (1024, 25, 200), (1024, 10, 200), (2048, 10, 200), (4296, 10, 130))


@dataclass(frozen=True)
class DecoderConfig:
    features: tuple[Feature, ...]
    kernel_size: int = 9

    def __post_init__(self):
        feats = tuple(tuple(int(d) for d in f) for f in self.features)
        object.__setattr__(self, "features", feats)
        if len(feats) < 2 or any(len(f) != 3 or min(f) < 1 for f in feats):
            raise ValueError(f"features must be two or more (channels, height, width) triples, got {self.features}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive ('same' padding), got {self.kernel_size}")

    @property
    def condition_shape(self) -> Feature:
        return self.features[0]

    @property
    def output_shape(self) -> Feature:
        return self.features[-1]

    @classmethod
    def paper_qwen05(cls) -> DecoderConfig:
        """The published configuration for Qwen2.5-0.5B (1,113,203,220 parameters)."""
        return cls(_PAPER_QWEN05, 9)

    @classmethod
    def for_layout(cls, layout, condition_shape: Feature, *, num_layers: int = 4, kernel_size: int = 9,
                   max_channels: int | None = None) -> DecoderConfig:
        """A cascade from ``condition_shape`` to ``(layout.num_tokens, *layout.token_shape)``:
        every dimension moves geometrically from its start to its end over ``num_layers`` layers
        (hidden channels capped at ``max_channels``)."""
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        start = tuple(int(d) for d in condition_shape)
        end = (layout.num_tokens, *layout.token_shape)
        feats = [start]
        for i in range(1, num_layers):
            f = i / num_layers
            feat = tuple(max(1, round(a * (b / a) ** f)) for a, b in zip(start, end))
            if max_channels is not None:
                feat = (min(feat[0], max_channels), *feat[1:])
            feats.append(feat)
        return cls(tuple(feats) + (end,), kernel_size)

    def to_dict(self) -> dict:
        return {"features": [list(f) for f in self.features], "kernel_size": self.kernel_size}

    @classmethod
    def from_dict(cls, d) -> DecoderConfig:
        return cls(tuple(tuple(f) for f in d["features"]), int(d["kernel_size"]))

    def flops(self, batch: int = 1) -> int:
        """Multiply-adds x 2 of one forward (the convolutions; norms and epilogues excluded)."""
        return sum(self.layer_flops(batch))

    def layer_flops(self, batch: int = 1) -> list[int]:
        """``flops`` of each layer."""
        k2, out = self.kernel_size ** 2, []
        for (c, h, w), (co, ho, wo) in zip(self.features[:-1], self.features[1:]):
            macs = h * c * wo * w * k2  # path 1, width as channels, over (h, c)
            macs += c * wo * ho * h * k2  # path 1, height as channels, over (c, w')
            macs += c * w * ho * h * k2  # path 2, height as channels, over (c, w)
            macs += ho * c * wo * w * k2  # path 2, width as channels, over (h', c)
            macs += ho * wo * co * c * k2  # channel conv
            out.append(2 * batch * macs)
        return out
