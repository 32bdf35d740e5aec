"""The two-tower AlexNet of Krizhevsky, Sutskever & Hinton (NIPS 2012), "ImageNet
Classification with Deep Convolutional Neural Networks", Figure 2 and §3-§5.

The paper split the net across two GTX 580 GPUs ("towers"). Each tower holds half
of the kernels of every layer; the GPUs communicate only in certain layers (§3.2):
conv3 takes all of conv2's maps, and fc6, fc7 and fc8 take all of the previous
layer's neurons. conv2, conv4 and conv5 see only their own tower's maps.

Two placements share one set of weights (and one state-dict key layout):
  devices=None          one device; the tower split is expressed by grouped
                        convolutions (groups=2) and by normalising each half of
                        the channels on its own.
  devices=(dev0, dev1)  two towers; tower t's half of every layer lives on dev t
                        and activations cross between devices only at the
                        exchanges of §3.2. fc8 is not split: it lives on dev0
                        and the logits come back on dev0.

Shapes for the paper's model (width=1.0), batch B. The paper's text says 224x224
inputs, but only 227x227 gives conv1's 55x55 maps with 11x11 kernels at stride 4.
  input  (B, 3, 227, 227)
  conv1  (B, 96, 55, 55)   = (B, 48, 55, 55) per tower, -> LRN -> pool1 (B, 96, 27, 27)
  conv2  (B, 256, 27, 27)  = (B, 128, 27, 27) per tower, -> LRN -> pool2 (B, 256, 13, 13)
  conv3  (B, 384, 13, 13)  <- towers exchange
  conv4  (B, 384, 13, 13)
  conv5  (B, 256, 13, 13)  -> pool5 (B, 256, 6, 6)
  fc6    (B, 4096)         <- towers exchange
  fc7    (B, 4096)         <- towers exchange
  fc8    (B, num_classes)  <- towers exchange
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from alexmodel.lrn import IMPLS, LRN

# Response normalisation constants, paper §3.3 ("k = 2, n = 5, alpha = 1e-4, beta = 0.75").
LRN_K = 2.0
LRN_N = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
DROPOUT_P = 0.5  # paper §4.2, in fc6 and fc7
INIT_STD = 0.01  # paper §5: "zero-mean Gaussian distribution with standard deviation 0.01"

# Channel / feature counts of the paper's model, both towers together (Figure 2).
PAPER_WIDTHS = {
    "conv1": 96,
    "conv2": 256,
    "conv3": 384,
    "conv4": 384,
    "conv5": 256,
    "fc6": 4096,
    "fc7": 4096,
}
INITS = ("paper", "modern")
MAX_WIDTH = 16  # the widest net built: 16 x the paper's channels, ~15 G parameters (~60 GB of fp32 weights)

Device = Union[str, torch.device]
# One tensor on one device, or one tensor per tower (tower 0 first).
Towers = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 1000  # paper §2: ILSVRC-2010/2012 classes
    width: float = 1.0  # multiplies every channel/feature count; 1.0 is the paper's net
    init: str = "paper"  # "paper" (§5) or "modern" (Kaiming normal, zero biases)
    devices: tuple[Device, Device] | None = None  # None: one device; else (tower 0, tower 1), §3.2

    def __post_init__(self):
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes={self.num_classes!r}: expected an int >= 1")
        if not (isinstance(self.width, (int, float)) and 0 < self.width <= MAX_WIDTH):
            raise ValueError(
                f"width={self.width!r}: expected a number in (0, {MAX_WIDTH}] ({MAX_WIDTH} makes ~15 G parameters)"
            )
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: expected one of {INITS}")
        if self.devices is not None and len(tuple(self.devices)) != 2:
            raise ValueError(f"devices={self.devices!r}: expected None or two devices (tower 0, tower 1)")

    def parameter_count(self) -> int:
        """The parameters of the net this config builds, by Figure 2's layers, without building it (a memory
        check before a wide net is allocated): 60,965,224 for the paper's (tests/test_model.py checks the formula
        against the module at several widths)."""
        c = self.widths()
        layers = (  # (inputs, outputs, kernel side, groups): conv2, conv4 and conv5 see their own tower only
            (3, c["conv1"], 11, 1),
            (c["conv1"], c["conv2"], 5, 2),
            (c["conv2"], c["conv3"], 3, 1),
            (c["conv3"], c["conv4"], 3, 2),
            (c["conv4"], c["conv5"], 3, 2),
            (c["conv5"] * 6 * 6, c["fc6"], 1, 1),
            (c["fc6"], c["fc7"], 1, 1),
            (c["fc7"], self.num_classes, 1, 1),
        )
        return sum(i // g * o * k * k + o for i, o, k, g in layers)

    def widths(self) -> dict[str, int]:
        """Channel/feature counts scaled by `width`, kept even so the two towers split them."""
        return {name: 2 * max(1, round(n * self.width / 2)) for name, n in PAPER_WIDTHS.items()}


class TowerLayer(nn.Module):
    """Weight (out, ...) and bias (out,) of one layer, split by output rows between the towers.

    One device: parameters `weight`, `bias` with the full output dimension.
    Two towers: `weight0`, `bias0` on dev0 hold output rows [0, out/2) and `weight1`,
    `bias1` on dev1 hold rows [out/2, out). The state dict always uses the one-device
    keys `weight`, `bias` (the halves are concatenated on dev0 when saving and split
    when loading), so checkpoints move between placements. In two-tower mode those
    entries are fresh tensors, not the parameters, even with keep_vars=True.
    Optimizer state, which follows the parameters, does not move between placements.
    """

    def __init__(self, weight_shape: Sequence[int], devices: tuple[torch.device, torch.device] | None):
        super().__init__()
        self.two_tower = devices is not None
        if not self.two_tower:
            self.weight = nn.Parameter(torch.empty(weight_shape))
            self.bias = nn.Parameter(torch.empty(weight_shape[0]))
            return
        half = weight_shape[0] // 2
        for t, device in enumerate(devices):
            self.register_parameter(f"weight{t}", nn.Parameter(torch.empty(half, *weight_shape[1:], device=device)))
            self.register_parameter(f"bias{t}", nn.Parameter(torch.empty(half, device=device)))

    def tower_params(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """[(weight, bias)] on one device, [(weight0, bias0), (weight1, bias1)] for two towers."""
        if not self.two_tower:
            return [(self.weight, self.bias)]
        return [(self.weight0, self.bias0), (self.weight1, self.bias1)]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self.two_tower:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        dev0 = self.weight0.device
        for name in ("weight", "bias"):
            whole = torch.cat([getattr(self, f"{name}0"), getattr(self, f"{name}1").to(dev0)])
            destination[prefix + name] = whole if keep_vars else whole.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if self.two_tower:
            # Rewrite this layer's one-device keys into per-tower halves, then load as usual.
            state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
            for name in ("weight", "bias"):
                whole = state_dict.pop(prefix + name, None)
                if whole is None:
                    continue  # the default loader reports the halves missing; renamed below
                halves = whole.chunk(2, dim=0)
                for t in range(2):
                    state_dict[f"{prefix}{name}{t}"] = halves[t].to(getattr(self, f"{name}{t}").device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.two_tower:
            # Report a missing key by its one-device name, the name the checkpoint should have.
            for name in ("weight", "bias"):
                halves = [f"{prefix}{name}{t}" for t in range(2)]
                if halves[0] in missing_keys:
                    missing_keys[:] = [k for k in missing_keys if k not in halves] + [prefix + name]


class TowerConv2d(TowerLayer):
    """A convolution split into two towers by output channels.

    groups=2: each tower's kernels see only its own tower's input maps (conv2, conv4,
    conv5). groups=1: each tower's kernels see all input maps (conv1, which sees the
    image, and conv3, fed by the exchange). In two-tower mode the caller hands tower t
    exactly the maps it sees, so every tower runs an ungrouped conv on its own device.
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0, groups=1, devices=None):
        super().__init__((out_channels, in_channels // groups, kernel_size, kernel_size), devices)
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x: Towers) -> Towers:
        if not self.two_tower:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)
        return tuple(F.conv2d(xt, w, b, self.stride, self.padding) for xt, (w, b) in zip(x, self.tower_params()))


class TowerLinear(TowerLayer):
    """A fully connected layer split into two towers by output neurons; each tower's
    neurons see the whole input (paper §3.2: fc layers are fed by both GPUs)."""

    def __init__(self, in_features, out_features, *, devices=None):
        super().__init__((out_features, in_features), devices)

    def forward(self, x: Towers) -> Towers:
        if not self.two_tower:
            return F.linear(x, self.weight, self.bias)
        return tuple(F.linear(xt, w, b) for xt, (w, b) in zip(x, self.tower_params()))


def each_tower(fn: Callable[[torch.Tensor], torch.Tensor], x: Towers) -> Towers:
    """Apply a channel-independent op (ReLU, pooling, dropout, flatten) to every tower."""
    return fn(x) if isinstance(x, torch.Tensor) else tuple(fn(xt) for xt in x)


def within_towers(norm: "LRN", x: Towers) -> Towers:
    """Normalise each tower's channels on their own (LRN mixes channels). On one device the towers are the two
    halves of the channel dimension: one call with groups=2 keeps every window inside its half, with no
    chunk/cat copies, and keeps a channels_last input channels_last."""
    if isinstance(x, torch.Tensor):
        return norm(x, groups=2)
    return tuple(norm(xt) for xt in x)


def lrn() -> LRN:
    """Paper §3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta (alexmodel/lrn.py)."""
    return LRN(LRN_N, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)


def set_lrn(model: nn.Module, impl: str) -> nn.Module:
    """`model` with every LRN computed by `impl` (alexmodel.lrn.IMPLS); returns the model."""
    if impl not in IMPLS:
        raise ValueError(f"LRN impl={impl!r}: expected one of {IMPLS}")
    for m in model.modules():
        if isinstance(m, LRN):
            m.impl = impl
    return model


class AlexNet(nn.Module):
    """The paper's two-tower AlexNet (Figure 2), 60,965,224 parameters at 1000 classes.

    num_classes: size of fc8.
    width: scales every channel/feature count (kept even); 1.0 is the paper's net, e.g.
        0.125 makes a small model for CPU demos and tests.
    init: "paper" draws all weights from N(0, 0.01) and sets the biases of conv2,
        conv4, conv5, fc6 and fc7 to 1 and the rest to 0 (§5: the positive biases
        "accelerate the early stages of learning by providing the ReLUs with positive
        inputs"). "modern" uses Kaiming-normal weights (He et al. 2015 §2.2: fan-in,
        ReLU gain) and zero biases; it keeps the activations' scale from layer to
        layer instead of shrinking it by the fixed 0.01, so the loss starts falling
        sooner. Use it for quick runs; "paper" for the reproduction.
    devices: None puts the whole net on one device (move it with .to() as usual);
        (dev0, dev1) builds the towers on those devices (e.g. ("cuda:0", "cuda:1"),
        or ("cpu", "cpu") for testing). Do not call .to(device) on a two-tower model,
        which would put both towers on one device; .to(dtype) and
        .to(memory_format=...) are fine. Inputs may live anywhere; logits are on dev0.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width: float = 1.0,
        init: str = "paper",
        devices: tuple[Device, Device] | None = None,
    ):
        super().__init__()
        self.config = ModelConfig(
            num_classes=num_classes, width=width, init=init, devices=None if devices is None else tuple(devices)
        )
        self.devices = None if devices is None else tuple(torch.device(d) for d in devices)
        c = self.config.widths()
        dev = self.devices

        self.conv1 = TowerConv2d(3, c["conv1"], 11, stride=4, devices=dev)
        self.norm1 = lrn()
        self.pool1 = nn.MaxPool2d(3, stride=2)  # overlapping pooling, §3.4: z=3, s=2
        self.conv2 = TowerConv2d(c["conv1"], c["conv2"], 5, padding=2, groups=2, devices=dev)
        self.norm2 = lrn()
        self.pool2 = nn.MaxPool2d(3, stride=2)
        self.conv3 = TowerConv2d(c["conv2"], c["conv3"], 3, padding=1, devices=dev)
        self.conv4 = TowerConv2d(c["conv3"], c["conv4"], 3, padding=1, groups=2, devices=dev)
        self.conv5 = TowerConv2d(c["conv4"], c["conv5"], 3, padding=1, groups=2, devices=dev)
        self.pool5 = nn.MaxPool2d(3, stride=2)
        self.fc6 = TowerLinear(c["conv5"] * 6 * 6, c["fc6"], devices=dev)
        self.drop6 = nn.Dropout(DROPOUT_P)
        self.fc7 = TowerLinear(c["fc6"], c["fc7"], devices=dev)
        self.drop7 = nn.Dropout(DROPOUT_P)
        # fc8 is not split: it lives on dev0, so the logits need no final gather.
        self.fc8 = nn.Linear(c["fc7"], num_classes, device=None if dev is None else dev[0])
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: ModelConfig) -> "AlexNet":
        return cls(config.num_classes, width=config.width, init=config.init, devices=config.devices)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        layers = {name: m for name, m in self.named_children() if isinstance(m, (TowerLayer, nn.Linear))}
        for name, layer in layers.items():
            params = layer.tower_params() if isinstance(layer, TowerLayer) else [(layer.weight, layer.bias)]
            for weight, bias in params:
                if self.config.init == "paper":
                    nn.init.normal_(weight, 0.0, INIT_STD)
                    # §5: bias 1 "in the second, fourth, and fifth convolutional layers, as
                    # well as in the fully-connected hidden layers"; 0 in the remaining layers.
                    nn.init.constant_(bias, 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)
                else:
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(bias)

    def _scatter(self, images: torch.Tensor) -> Towers:
        """Both towers see the whole image (each conv1 half has all 3 input channels)."""
        if self.devices is None:
            return images
        return tuple(images.to(d) for d in self.devices)

    def _exchange(self, x: Towers) -> Towers:
        """The GPUs communicate (§3.2): every tower gets both towers' maps, tower 0's first."""
        if self.devices is None:
            return x  # one device: the next layer is ungrouped and already sees all channels
        return tuple(torch.cat([x[0].to(d), x[1].to(d)], dim=1) for d in self.devices)

    def _gather(self, x: Towers) -> torch.Tensor:
        """Both towers' neurons onto dev0, for fc8 (which is not split)."""
        if self.devices is None:
            return x
        return torch.cat([x[0], x[1].to(self.devices[0])], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:  # one preprocessed image is (3, 227, 227): say so, rather than fail inside conv1
            raise ValueError(
                f"AlexNet takes a batch (B, 3, H, W), got shape {tuple(images.shape)}; for one image: model(x[None])"
            )
        x = self._scatter(images)  # (B, 3, 227, 227), a copy per tower
        # Layer 1: ReLU, then response normalisation, then pooling (§3.3, §3.5). The ReLUs run in place: no
        # convolution or linear layer keeps its output for its backward, so a second buffer would only cost memory.
        x = each_tower(F.relu_, self.conv1(x))  # (B, 48, 55, 55) per tower
        x = within_towers(self.norm1, x)
        x = each_tower(self.pool1, x)  # (B, 48, 27, 27) per tower
        # Layer 2: each tower sees only its own 48 maps.
        x = each_tower(F.relu_, self.conv2(x))  # (B, 128, 27, 27) per tower
        x = within_towers(self.norm2, x)
        x = each_tower(self.pool2, x)  # (B, 128, 13, 13) per tower
        # Layer 3: towers exchange; each tower's kernels see all 256 maps.
        x = self._exchange(x)  # (B, 256, 13, 13) on each tower
        x = each_tower(F.relu_, self.conv3(x))  # (B, 192, 13, 13) per tower
        x = each_tower(F.relu_, self.conv4(x))  # (B, 192, 13, 13) per tower
        x = each_tower(F.relu_, self.conv5(x))  # (B, 128, 13, 13) per tower
        x = each_tower(self.pool5, x)  # (B, 128, 6, 6) per tower
        # Channel-major flatten: concatenating the towers' (B, 4608) gives the
        # one-device (B, 9216) order, so fc6's weight columns mean the same in both.
        x = each_tower(lambda t: torch.flatten(t, 1), x)  # (B, 4608) per tower
        x = self._exchange(x)  # (B, 9216) on each tower
        x = each_tower(lambda t: self.drop6(F.relu_(t)), self.fc6(x))  # (B, 2048) per tower
        x = self._exchange(x)  # (B, 4096) on each tower
        x = each_tower(lambda t: self.drop7(F.relu_(t)), self.fc7(x))  # (B, 2048) per tower
        x = self._gather(x)  # (B, 4096) on dev0: towers exchange into fc8
        return self.fc8(x)  # (B, num_classes)


__all__ = [
    "AlexNet",
    "ModelConfig",
    "TowerConv2d",
    "TowerLinear",
    "lrn",
    "set_lrn",
    "LRN_K",
    "LRN_N",
    "LRN_ALPHA",
    "LRN_BETA",
]
