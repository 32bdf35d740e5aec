"""Properties of alexmodel.AlexNet, checked against independent references: the paper's
layer table (Krizhevsky et al. 2012, Figure 2 and §5; the LRN: tests/test_lrn.py), a
parameter count from the layer formula, and the one-device model for the two towers."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexmodel import AlexNet, ModelConfig

TWO_CPU = ("cpu", "cpu")
SMALL = 0.25  # width of the small test model: conv1 24, conv2 64, ..., fc 1024
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
TOWER_LAYERS = CONVS + ("fc6", "fc7")

# The paper's table (Figure 2), batch B, both towers together.
PAPER_SHAPES = {
    "conv1": (96, 55, 55),
    "pool1": (96, 27, 27),
    "conv2": (256, 27, 27),
    "pool2": (256, 13, 13),
    "conv3": (384, 13, 13),
    "conv4": (384, 13, 13),
    "conv5": (256, 13, 13),
    "pool5": (256, 6, 6),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
}


def images(batch=2, seed=0):
    return torch.randn(batch, 3, 227, 227, generator=torch.Generator().manual_seed(seed))


def random_state(model, seed=0, scale=0.05):
    """The model's state dict with every entry replaced by N(0, scale), biases included."""
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in model.state_dict().items()}


def record_outputs(model, names):
    """Forward hooks that collect each named module's outputs (one entry per call)."""
    seen = {name: [] for name in names}
    for name in names:
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: seen[name].append(out))
    return seen


def as_towers(out):
    return list(out) if isinstance(out, tuple) else [out]


# --- shapes and parameter count ---------------------------------------------------------


def test_every_layer_matches_the_paper_table():
    model = AlexNet().eval()
    seen = record_outputs(model, PAPER_SHAPES)
    with torch.no_grad():
        logits = model(images(batch=2))
    assert logits.shape == (2, 1000)
    for name, shape in PAPER_SHAPES.items():
        (out,) = seen[name]
        assert out.shape == (2, *shape), name


def test_two_towers_hold_half_of_every_split_layer():
    model = AlexNet(devices=TWO_CPU).eval()
    seen = record_outputs(model, TOWER_LAYERS + ("fc8",))
    with torch.no_grad():
        model(images(batch=1))
    for name in TOWER_LAYERS:
        (out,) = seen[name]
        channels, *rest = PAPER_SHAPES[name]
        assert [t.shape for t in out] == [(1, channels // 2, *rest)] * 2, name
    assert seen["fc8"][0].shape == (1, 1000)  # fc8 is not split; it lives on tower 0


def paper_param_count(num_classes=1000):
    """Weights and biases layer by layer; conv2, conv4, conv5 kernels see one tower's maps."""
    layers = [  # (kernels, input maps per kernel, kernel area)
        (96, 3, 11 * 11),
        (256, 96 // 2, 5 * 5),
        (384, 256, 3 * 3),
        (384, 384 // 2, 3 * 3),
        (256, 384 // 2, 3 * 3),
        (4096, 256 * 6 * 6, 1),
        (4096, 4096, 1),
        (num_classes, 4096, 1),
    ]
    return sum(k * maps * area + k for k, maps, area in layers)


@pytest.mark.parametrize("devices", [None, TWO_CPU])
def test_parameter_count_is_the_papers(devices):
    assert paper_param_count() == 60_965_224
    model = AlexNet(devices=devices)
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    assert sum(v.numel() for v in model.state_dict().values()) == 60_965_224
    assert ModelConfig().parameter_count() == 60_965_224


@pytest.mark.parametrize("width, classes", [(0.0625, 3), (0.3, 7), (0.5, 10)])
def test_the_parameter_count_without_building_matches_the_module(width, classes):
    net = AlexNet(classes, width=width)
    assert ModelConfig(num_classes=classes, width=width).parameter_count() == sum(p.numel() for p in net.parameters())


def test_a_net_too_wide_for_the_memory_is_refused_before_it_is_built(monkeypatch):
    from alexdata.errors import TrainError
    from alexmodel import build

    monkeypatch.setattr(build, "available_bytes", lambda device, index=0: 20 * 2**30)  # 20 GiB free
    build.refuse_too_big(ModelConfig(), "cpu")  # the paper's: 0.7 GiB
    with pytest.raises(
        TrainError, match=r"^--width 8: 3\.67 G parameters need 41\.0 GiB to train .* has 20\.0 GiB free"
    ):
        build.refuse_too_big(ModelConfig(width=8), "cpu")
    assert build.available_bytes("cpu") > 0  # this machine's /proc/meminfo


# --- initialisation ---------------------------------------------------------------------


@pytest.mark.parametrize("devices", [None, TWO_CPU])
def test_paper_init(devices):
    state = AlexNet(devices=devices).state_dict()
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # §5; conv1, conv3, fc8 get 0
    for layer in CONVS + ("fc6", "fc7", "fc8"):
        w, b = state[f"{layer}.weight"], state[f"{layer}.bias"]
        tolerance = 6 / np.sqrt(2 * w.numel())  # ~6 standard errors of a sample std
        assert abs(w.std().item() / 0.01 - 1) < tolerance, layer
        assert abs(w.mean().item()) < 6 * 0.01 / np.sqrt(w.numel()), layer
        assert torch.equal(b, torch.full_like(b, 1.0 if layer in ones else 0.0)), layer


def test_modern_init_is_kaiming_with_zero_biases():
    state = AlexNet(10, width=SMALL, init="modern").state_dict()
    for layer in CONVS + ("fc6", "fc7", "fc8"):
        w = state[f"{layer}.weight"]
        fan_in = w[0].numel()
        assert abs(w.std().item() / np.sqrt(2 / fan_in) - 1) < 0.1, layer
        assert not state[f"{layer}.bias"].any(), layer


@pytest.mark.parametrize(
    "bad, named",
    [
        (dict(init="xavier"), "init='xavier'"),
        (dict(width=0), "width=0"),
        (dict(width=1e6), "width=1000000.0: expected a number in (0, 16]"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(devices=("cpu",)), "devices=('cpu',)"),
    ],
)
def test_config_rejects_bad_values(bad, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        ModelConfig(**bad)


def test_width_keeps_towers_even():
    assert all(n % 2 == 0 for n in ModelConfig(width=0.3).widths().values())
    assert ModelConfig(width=1.0).widths()["conv1"] == 96
    assert AlexNet.from_config(ModelConfig(num_classes=10, width=0.3)).config.width == 0.3


# --- placement: one device vs two towers -------------------------------------------------


def test_placements_agree_and_state_dicts_move_both_ways():
    single = AlexNet(10, width=SMALL).eval()
    towers = AlexNet(10, width=SMALL, devices=TWO_CPU).eval()
    assert list(towers.state_dict()) == list(single.state_dict())
    x = images(batch=3)

    single.load_state_dict(random_state(single, seed=1))
    result = towers.load_state_dict(single.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(towers(x), single(x), rtol=1e-5, atol=1e-6)

    towers.load_state_dict(random_state(towers, seed=2))
    back = AlexNet(10, width=SMALL).eval()
    back.load_state_dict(towers.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), towers(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(back(x), single(x))  # the weights did change


def test_placements_agree_on_gradients():
    single = AlexNet(10, width=SMALL).eval()
    towers = AlexNet(10, width=SMALL, devices=TWO_CPU).eval()
    single.load_state_dict(random_state(single, seed=3))
    towers.load_state_dict(single.state_dict())
    x, target = images(batch=2), torch.tensor([1, 7])
    for model in (single, towers):
        F.cross_entropy(model(x), target).backward()
    for name in TOWER_LAYERS:
        one, two = getattr(single, name), getattr(towers, name)
        for p in ("weight", "bias"):
            merged = torch.cat([getattr(two, f"{p}0").grad, getattr(two, f"{p}1").grad])
            torch.testing.assert_close(merged, getattr(one, p).grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(towers.fc8.weight.grad, single.fc8.weight.grad, rtol=1e-4, atol=1e-6)


def test_two_tower_load_reports_missing_keys():
    towers = AlexNet(10, width=SMALL, devices=TWO_CPU)
    state = AlexNet(10, width=SMALL).state_dict()
    del state["conv3.weight"]
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "conv3.weight"\\.'):
        towers.load_state_dict(state)
    state["conv3.extra"] = torch.zeros(1)
    result = towers.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["conv3.extra"]


# --- training properties -----------------------------------------------------------------


def test_one_image_without_a_batch_dimension_is_one_clear_error():
    """model(model.preprocess(img)) hands it (3, 227, 227): the message says how to make it a batch."""
    model = AlexNet(10, width=SMALL).eval()
    with pytest.raises(ValueError, match=r"takes a batch \(B, 3, H, W\), got shape \(3, 227, 227\); .*x\[None\]"):
        model(torch.zeros(3, 227, 227))
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 10)


@pytest.mark.parametrize("devices", [None, TWO_CPU])
def test_every_parameter_gets_a_gradient(devices):
    torch.manual_seed(0)
    model = AlexNet(10, width=SMALL, devices=devices).train()
    logits = model(images(batch=2))
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- layout, precision, compilation ------------------------------------------------------


def is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("devices", [None, TWO_CPU])
@pytest.mark.parametrize("autocast", [False, True])
def test_channels_last_survives_every_conv_stage(devices, autocast):
    model = AlexNet(10, width=SMALL, devices=devices).eval().to(memory_format=torch.channels_last)
    stages = CONVS + ("norm1", "pool1", "norm2", "pool2", "pool5")
    layouts = {}
    for name in stages:

        def hook(module, args, out, name=name):
            # Inputs too, to catch a copy between stages; LRN's one-device input is a
            # view of one tower's channels, strided but not copied, so only its output counts.
            tensors = as_towers(out) + ([] if name.startswith("norm") else as_towers(args[0]))
            layouts.setdefault(name, []).extend(is_channels_last(t) for t in tensors if t.dim() == 4)

        getattr(model, name).register_forward_hook(hook)
    x = images(batch=2).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(x)
    assert set(layouts) == set(stages)
    assert {name: all(flags) for name, flags in layouts.items()} == dict.fromkeys(stages, True)


def test_bf16_autocast_is_close_to_fp32():
    model = AlexNet(10, width=SMALL, init="modern").eval()
    x = images(batch=4)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16
    relative = (got.float() - want).norm() / want.norm()
    assert relative < 0.05, relative.item()


@pytest.mark.slow  # ~10-20 s of inductor compilation on 2 CPU cores
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside inductor
def test_torch_compile_matches_eager():
    # One graph (fullgraph=True fails on a graph break), channels_last in and out of the convs.
    model = AlexNet(10, width=0.125).eval().to(memory_format=torch.channels_last)
    x = images(batch=2).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_towers_on_gpus_match_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions sit near the tolerance
    # Two GPUs: the paper's placement. One GPU: tower 1 on the CPU still crosses devices.
    devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda:0", "cpu")
    reference = AlexNet(10, width=SMALL).eval()
    reference.load_state_dict(random_state(reference, seed=4))
    towers = AlexNet(10, width=SMALL, devices=devices).eval()
    towers.load_state_dict(reference.state_dict())
    for layer in TOWER_LAYERS:
        assert [p.device for p in getattr(towers, layer).tower_params()[1]] == [torch.device(devices[1])] * 2
    single_gpu = AlexNet(10, width=SMALL).eval().cuda()
    single_gpu.load_state_dict(reference.state_dict())
    x = images(batch=2)
    with torch.no_grad():
        want = reference(x)
        got_towers, got_single = towers(x), single_gpu(x.cuda())
    assert got_towers.device == torch.device(devices[0])
    # cuDNN and the CPU sum in different orders, hence the loose tolerance.
    torch.testing.assert_close(got_towers.cpu(), want, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(got_single.cpu(), want, rtol=1e-2, atol=1e-3)
    back = AlexNet(10, width=SMALL).eval()
    back.load_state_dict(towers.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), want)
