# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr,attr-defined,call-arg,arg-type"
# (torch's and transformers' own annotations, not ours: untyped backward(), Any-returning modules, config kwargs)
"""Hub architectures for the conformance zoo (``tools/bench_hub.py``, ``tests/integration/test_hub_zoo.py``).

The real model classes of Hugging Face ``transformers`` (ResNet, ConvNeXt, ViT, Swin, BERT, Wav2Vec2, Whisper's
encoder, SegFormer, ...) built from small configs, plus the few architectures transformers has no class for
(MobileNetV3 blocks with hardswish, an SSD-style and a YOLO-style detection head, LR-ASPP and a U-Net), written
here from the papers' blocks. Nothing is downloaded: every model is seeded random init, trained for a few seconds
on scikit-learn's digits (images upscaled to 32x32 RGB) or on seeded synthetic data (tones for audio, keyword
sequences for text, squares on noise for detection), then its BatchNorm statistics are recalibrated on the
training data so the activations a converter calibrates on are the ones training produced, not init's.

Each model is wrapped to return plain tensors (logits; a tuple for several outputs), so ``torch.export`` and the
ONNX exporter see a function of tensors. Attention runs in transformers' ``eager`` implementation: the one that
exports to plain matmul/softmax in both exporters. Same seed, same weights (one thread while training).

    case("vit") -> Case(module, cal, eval, labels, example, ...)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGE = 32  # image side: small enough that one model converts in well under a minute
# The transformer size every text, audio and ViT-style model shares: 2 layers of width 32, 2 heads.
TINY_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_VIT: dict[str, Any] = {"image_size": IMAGE, "patch_size": 8, **TINY_ENCODER}
SEQ, VOCAB = 16, 64  # text: fixed sequence length, vocabulary
AUDIO = 1600  # raw waveform samples (0.1 s at 16 kHz)
MELS, FRAMES = 16, 32  # Whisper-style log-mel features


@dataclass
class Case:
    """One zoo model: the module, its data as PyTorch takes it, and how to judge its outputs.

    ``cal`` and ``eval_x`` map each input name (``forward``'s parameter names, which the ``.pt2`` and ONNX
    exports keep) to an array [N, ...]. ``labels`` are the evaluation labels of the first output where the task
    has them (argmax over ``class_axis``), else None (then argmax agreement with PyTorch is what is reported).
    """

    name: str
    family: str
    module: nn.Module
    cal: dict[str, np.ndarray]
    eval_x: dict[str, np.ndarray]
    labels: np.ndarray | None
    class_axis: int = 1  # the axis of the first output that argmax (top-1 / agreement) is taken over

    @property
    def input_names(self) -> list[str]:
        return list(self.cal)

    def example(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a[:1]) for a in self.cal.values())


class Logits(nn.Module):
    """A transformers model returning plain tensors: the named fields of its output, in order."""

    def __init__(self, model: nn.Module, fields: tuple[str, ...] = ("logits",)) -> None:
        super().__init__()
        self.model = model
        self.fields = fields

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        got = tuple(getattr(out, f) if hasattr(out, f) else out[f] for f in self.fields)
        return got[0] if len(got) == 1 else got


class TextLogits(nn.Module):
    """A text classifier taking token ids and the attention mask (both integer), returning logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class PooledHead(nn.Module):
    """An encoder (Whisper's, which has no classification class) mean-pooled into a linear classifier."""

    def __init__(self, encoder: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x).last_hidden_state.mean(1))


# --- architectures transformers has no class for, from the papers' blocks -----------------------------------


def _conv_bn(cin: int, cout: int, k: int, s: int, act: type[nn.Module] | None, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: pool, reduce (ReLU), expand, hardsigmoid gate."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(ch, max(8, ch // 4), 1)
        self.fc2 = nn.Conv2d(max(8, ch // 4), ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * nn.functional.hardsigmoid(s)


class Bneck(nn.Module):
    """MobileNetV3's inverted residual: expand 1x1, depthwise kxk, optional SE, project 1x1."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, s: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _conv_bn(cin, exp, 1, 1, act),
            _conv_bn(exp, exp, k, s, act, groups=exp),
            SqueezeExcite(exp) if se else nn.Identity(),
            _conv_bn(exp, cout, 1, 1, None),
        )
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Features(nn.Module):
    """A MobileNetV3-Small-shaped trunk (hardswish, SE with hardsigmoid), stride 8 and 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, nn.Hardswish)
        self.s8 = nn.Sequential(Bneck(16, 16, 16, 3, 2, True, nn.ReLU), Bneck(16, 72, 24, 3, 2, False, nn.ReLU))
        self.s16 = nn.Sequential(
            Bneck(24, 96, 40, 5, 2, True, nn.Hardswish), Bneck(40, 120, 40, 5, 1, True, nn.Hardswish)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s8(self.stem(x))
        return f8, self.s16(f8)


class MobileNetV3(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = MobileNetV3Features()
        self.head = nn.Sequential(nn.Linear(40, 64), nn.Hardswish(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[1].mean((2, 3)))


class SSDHead(nn.Module):
    """SSD-style: MobileNetV3 features at strides 8 and 16, per-anchor class scores and box offsets.

    Two outputs, concatenated over both feature maps' anchors (2 per cell): ``scores`` [N, A, 2] and
    ``boxes`` [N, A, 4]. Decoding and NMS stay outside the model, as on a device.
    """

    def __init__(self, anchors: int = 2, classes: int = 2) -> None:
        super().__init__()
        self.features = MobileNetV3Features()
        self.a, self.c = anchors, classes
        self.cls8, self.box8 = nn.Conv2d(24, anchors * classes, 3, padding=1), nn.Conv2d(24, anchors * 4, 3, padding=1)
        self.cls16 = nn.Conv2d(40, anchors * classes, 3, padding=1)
        self.box16 = nn.Conv2d(40, anchors * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8, f16 = self.features(x)
        n = x.shape[0]

        def flat(t: torch.Tensor, k: int) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(n, -1, k)

        scores = torch.cat([flat(self.cls8(f8), self.c), flat(self.cls16(f16), self.c)], 1)
        boxes = torch.cat([flat(self.box8(f8), 4), flat(self.box16(f16), 4)], 1)
        return scores, boxes


class YoloHead(nn.Module):
    """YOLO-style: a CSP-ish conv trunk (SiLU), one prediction map per scale (stride 8 and 16).

    Each map is [N, 4 + 1 + classes, H, W] per cell (box, objectness, class scores); two outputs.
    """

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, nn.SiLU)
        self.s8 = nn.Sequential(_conv_bn(16, 32, 3, 2, nn.SiLU), _conv_bn(32, 32, 3, 2, nn.SiLU))
        self.s16 = _conv_bn(32, 48, 3, 2, nn.SiLU)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _conv_bn(32 + 48, 32, 1, 1, nn.SiLU)
        self.p8 = nn.Conv2d(32, 5 + classes, 1)
        self.p16 = nn.Conv2d(48, 5 + classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s8(self.stem(x))
        f16 = self.s16(f8)
        f8 = self.fuse(torch.cat([f8, self.up(f16)], 1))
        return self.p8(f8), self.p16(f16)


class LRASPP(nn.Module):
    """LR-ASPP (MobileNetV3's segmentation head): a sigmoid-gated stride-16 branch plus a stride-8 skip."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.features = MobileNetV3Features()
        self.cbr = _conv_bn(40, 32, 1, 1, nn.ReLU)
        self.scale = nn.Conv2d(40, 32, 1, bias=False)
        self.low = nn.Conv2d(24, classes, 1)
        self.high = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f8, f16 = self.features(x)
        y = self.cbr(f16) * torch.sigmoid(self.scale(f16.mean((2, 3), keepdim=True)))
        y = nn.functional.interpolate(y, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low(f8) + self.high(y)
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class UNet(nn.Module):
    """A two-level U-Net: conv blocks, max-pool down, transposed-conv up, skip concatenation."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_conv_bn(cin, cout, 3, 1, nn.ReLU), _conv_bn(cout, cout, 3, 1, nn.ReLU))

        self.e1, self.e2, self.mid = block(3, 8), block(8, 16), block(16, 32)
        self.u2, self.d2 = nn.ConvTranspose2d(32, 16, 2, 2), block(32, 16)
        self.u1, self.d1 = nn.ConvTranspose2d(16, 8, 2, 2), block(16, 8)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.u2(m), e2], 1))
        return self.out(self.d1(torch.cat([self.u1(d2), e1], 1)))


# --- data ---------------------------------------------------------------------------------------------------


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 32x32 RGB in [0, 1] (8x8 upscaled 4x, a little colour), NCHW, and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((4, 4)))[:, None].astype(np.float32)  # [N, 1, 32, 32]
    tint = np.array([1.0, 0.8, 0.6], np.float32)[None, :, None, None]
    return np.ascontiguousarray(x * tint), d.target.astype(np.int64)


def tones(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw audio: one of 8 tone frequencies with random phase and amplitude in noise; the label is which."""
    y = rng.integers(0, 8, n)
    t = np.arange(AUDIO) / 16000.0
    freq = 300.0 * (1.5 ** y.astype(np.float64))
    amp = rng.uniform(0.3, 0.9, n)[:, None]
    x = amp * np.sin(2 * np.pi * freq[:, None] * t[None] + rng.uniform(0, 6.3, n)[:, None])
    return (x + rng.normal(0, 0.1, x.shape)).astype(np.float32), y.astype(np.int64)


def mel_tones(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Whisper-style log-mel features [N, MELS, FRAMES]: a band (the label, of 8) that rises over time."""
    y = rng.integers(0, 8, n)
    bins = np.arange(MELS)[None, :, None]
    centre = (y * 2 + 1)[:, None, None] + np.linspace(0, 1.5, FRAMES)[None, None, :]
    x = np.exp(-0.5 * (bins - centre) ** 2) * rng.uniform(0.5, 1.0, (n, 1, 1))
    return (np.log(x + 0.05) / 3 + rng.normal(0, 0.05, x.shape)).astype(np.float32), y.astype(np.int64)


def keyword_text(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids [N, SEQ] (int64, 0 the padding id), the attention mask (int64) and a label of 4.

    Each sequence is random tokens 8.. with one of four keyword ids 4..7 at a few positions; the label is which
    keyword. Lengths vary from 6 to SEQ, the rest is padding the mask hides.
    """
    ids = rng.integers(8, VOCAB, (n, SEQ))
    y = rng.integers(0, 4, n)
    lengths = rng.integers(6, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    for i in range(n):
        pos = rng.choice(lengths[i] - 1, size=2, replace=False) + 1
        ids[i, pos] = 4 + y[i]
    ids[:, 0] = 1  # a [CLS]-like first token
    ids = np.where(mask == 1, ids, 0)
    return ids.astype(np.int64), mask, y.astype(np.int64)


def squares(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection/segmentation data: a bright square (class 0) or disc (class 1) on noise, NCHW [0, 1].

    Returns the images, the per-pixel mask (0 background, 1 object) and the object's class and box
    (centre x, centre y, side, in units of the image side) as [N, 5].
    """
    x = rng.uniform(0, 0.3, (n, 3, IMAGE, IMAGE)).astype(np.float32)
    mask = np.zeros((n, IMAGE, IMAGE), np.int64)
    info = np.zeros((n, 5), np.float32)
    yy, xx = np.mgrid[:IMAGE, :IMAGE]
    for i in range(n):
        side = rng.integers(8, 16)
        cx, cy = rng.integers(side // 2, IMAGE - side // 2, 2)
        kind = rng.integers(0, 2)
        if kind == 0:
            m = (abs(xx - cx) <= side // 2) & (abs(yy - cy) <= side // 2)
        else:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 <= (side // 2) ** 2
        colour = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        x[i][:, m] = colour[:, None]
        mask[i][m] = 1
        info[i] = (kind, cx / IMAGE, cy / IMAGE, side / IMAGE, 1)
    return x, mask, info


# --- training -----------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    inputs: list[np.ndarray],
    loss: Callable[[Any, int], torch.Tensor],
    steps: int,
    lr: float = 3e-3,
    batch: int = 32,
) -> nn.Module:
    """A few seconds of Adam on minibatches (seeded), then BatchNorm statistics recalibrated on the data.

    ``loss(outputs, rows)`` gets the model's outputs on the minibatch and its row indices. Recalibration
    (cumulative averages over 8 training batches, everything else in eval mode) replaces the running
    statistics that a few hundred optimizer steps leave half-converged: a converter calibrates on these
    activations, and it should see what a trained network computes.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tensors = [torch.from_numpy(a) for a in inputs]
    n = len(inputs[0])
    model.train()
    for _ in range(steps):
        rows = rng.choice(n, batch, replace=False)
        opt.zero_grad()
        loss(model(*(t[rows] for t in tensors)), rows).backward()
        opt.step()
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # noqa: SLF001
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        with torch.no_grad():
            for start in range(0, min(n, 256), 32):
                model(*(t[start : start + 32] for t in tensors))
        model.eval()
    return model


def _ce(labels: np.ndarray) -> Callable[[Any, int], torch.Tensor]:
    yt = torch.from_numpy(labels)

    def loss(out: Any, rows: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(out, yt[rows])

    return loss


# --- the zoo ------------------------------------------------------------------------------------------------


def _hf(name: str, **kw: Any) -> Any:
    """A transformers config with no dropout, eager attention and 10 labels unless given."""
    import transformers

    kw.setdefault("num_labels", 10)
    config = getattr(transformers, name)(**kw)
    for key in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout_prob",
        "dropout",
        "attention_dropout",
        "drop_path_rate",
        "hidden_dropout",
        "activation_dropout",
        "feat_proj_dropout",
        "final_dropout",
        "layerdrop",
        "qa_dropout",
        "seq_classif_dropout",
        "drop_connect_rate",
        "classifier_dropout",
        "mask_time_prob",
        "attention_probs_dropout_prob",
    ):
        if hasattr(config, key) and isinstance(getattr(config, key), float):
            setattr(config, key, 0.0)
    config._attn_implementation = "eager"  # noqa: SLF001
    return config


def _model(cls: str, config: Any) -> nn.Module:
    """The model class, seeded, with every BatchNorm starting at scale 1 and shift 0 as torch starts them.

    transformers 5 draws EfficientNet's and MobileViT's BatchNorm scales from N(0, 0.02) like a Linear's
    weights: each block then shrinks its input about 100-fold, and by the last block EfficientNet's activations
    are 1e-40, so its logits do not depend on the image and no training in a few hundred steps revives it.
    Pretrained checkpoints overwrite that initialisation; a zoo trained from scratch must not inherit it.
    """
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls)(config)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:  # noqa: SLF001
            with torch.no_grad():
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


VISION: dict[str, Callable[[], tuple[str, Any]]] = {
    "resnet": lambda: (
        "ResNetForImageClassification",
        _hf("ResNetConfig", embedding_size=16, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], layer_type="basic"),
    ),
    "resnet_bottleneck": lambda: (
        "ResNetForImageClassification",
        _hf(
            "ResNetConfig",
            embedding_size=16,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            layer_type="bottleneck",
            downsample_in_bottleneck=True,
        ),
    ),
    "regnet": lambda: (
        "RegNetForImageClassification",
        _hf("RegNetConfig", embedding_size=16, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], groups_width=8),
    ),
    "convnext": lambda: (
        "ConvNextForImageClassification",
        _hf("ConvNextConfig", patch_size=2, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], num_stages=3),
    ),
    "convnextv2": lambda: (
        "ConvNextV2ForImageClassification",
        _hf("ConvNextV2Config", patch_size=2, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], num_stages=3),
    ),
    "mobilenet_v1": lambda: (
        "MobileNetV1ForImageClassification",
        _hf("MobileNetV1Config", image_size=IMAGE, depth_multiplier=0.25, min_depth=8),
    ),
    "mobilenet_v2": lambda: (
        "MobileNetV2ForImageClassification",
        _hf("MobileNetV2Config", image_size=IMAGE, depth_multiplier=0.25, min_depth=8),
    ),
    "efficientnet": lambda: (
        "EfficientNetForImageClassification",
        _hf("EfficientNetConfig", image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320),
    ),
    "mobilevit": lambda: (
        "MobileViTForImageClassification",
        _hf(
            "MobileViTConfig",
            image_size=IMAGE,
            hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            num_attention_heads=2,
        ),
    ),
    "poolformer": lambda: (
        "PoolFormerForImageClassification",
        _hf(
            "PoolFormerConfig",
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
            patch_sizes=[3, 3, 3, 3],
            strides=[2, 2, 2, 2],
            padding=[1, 1, 1, 1],
            num_encoder_blocks=4,
        ),
    ),
    "bit": lambda: (
        "BitForImageClassification",
        _hf(
            "BitConfig",
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="preactivation",
            global_padding="SAME",
            num_groups=8,
        ),
    ),
    "vit": lambda: (
        "ViTForImageClassification",
        _hf(
            "ViTConfig",
            **TINY_VIT,
        ),
    ),
    "deit": lambda: (
        "DeiTForImageClassification",
        _hf(
            "DeiTConfig",
            **TINY_VIT,
        ),
    ),
    "beit": lambda: (
        "BeitForImageClassification",
        _hf(
            "BeitConfig",
            **TINY_VIT,
            use_relative_position_bias=True,
            use_mean_pooling=True,
        ),
    ),
    "dinov2": lambda: (
        "Dinov2ForImageClassification",
        _hf(
            "Dinov2Config",
            image_size=IMAGE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
        ),
    ),
    "swin": lambda: (
        "SwinForImageClassification",
        _hf("SwinConfig", image_size=IMAGE, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4),
    ),
    "levit": lambda: (
        "LevitForImageClassification",
        _hf(
            "LevitConfig",
            image_size=IMAGE,
            patch_size=16,
            hidden_sizes=[32, 48],
            num_attention_heads=[2, 2],
            depths=[1, 1],
            key_dim=[8, 8],
            mlp_ratio=[2, 2],
            attention_ratio=[2, 2],
            down_ops=[["Subsample", 8, 2, 2, 2, 2]],
        ),
    ),
}

LR = {"convnext": 1e-3, "efficientnet": 1e-3}  # where 3e-3 diverges in 150 steps

FAMILY = {
    **dict.fromkeys(
        (
            "resnet",
            "resnet_bottleneck",
            "regnet",
            "convnext",
            "convnextv2",
            "mobilenet_v1",
            "mobilenet_v2",
            "efficientnet",
            "mobilenet_v3",
            "poolformer",
            "bit",
        ),
        "vision CNN",
    ),
    **dict.fromkeys(("mobilevit", "vit", "deit", "beit", "dinov2", "swin", "levit"), "vision transformer"),
    **dict.fromkeys(("wav2vec2", "hubert", "whisper_encoder", "ast"), "audio"),
    **dict.fromkeys(("bert", "distilbert", "roberta"), "text"),
    **dict.fromkeys(("ssd_mnv3", "yolo"), "detection"),
    **dict.fromkeys(("segformer", "mobilevit_deeplab", "lraspp_mnv3", "unet"), "segmentation"),
}
NAMES = tuple(FAMILY)
SOURCE = {  # where each architecture's definition comes from (the docs table says it)
    **{n: "transformers" for n in NAMES},
    **dict.fromkeys(("mobilenet_v3", "ssd_mnv3", "yolo", "lraspp_mnv3", "unet"), "here (paper blocks)"),
}


def _split(arrays: dict[str, np.ndarray], train_n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Calibration (200 training rows) and evaluation (200 held-out rows) per input."""
    return ({k: v[:200] for k, v in arrays.items()}, {k: v[train_n : train_n + 200] for k, v in arrays.items()})


def case(name: str) -> Case:
    """The zoo model ``name``, trained, with its calibration and evaluation data (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights on every machine size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _case(name)
    finally:
        torch.set_num_threads(threads)


def _case(name: str) -> Case:
    rng = np.random.default_rng(0)
    family = FAMILY[name]
    if name in VISION or name == "mobilenet_v3":
        images, labels = digit_images()
        if name == "mobilenet_v3":
            torch.manual_seed(0)
            module: nn.Module = MobileNetV3()
        else:
            cls, config = VISION[name]()
            module = Logits(_model(cls, config))
        module = train(module, [images[:1200]], _ce(labels[:1200]), 150, lr=LR.get(name, 3e-3))
        cal, ev = _split({"x": images}, 1200)
        return Case(name, family, module, cal, ev, labels[1200:1400])
    if name in ("wav2vec2", "hubert"):
        x, y = tones(1400, rng)
        audio = dict(
            **TINY_ENCODER,
            conv_dim=(16, 16, 16, 16),
            conv_stride=(5, 4, 4, 4),
            conv_kernel=(10, 4, 4, 4),
            num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=4,
            num_labels=8,
            feat_extract_norm="group",
            do_stable_layer_norm=False,
            classifier_proj_size=32,
            apply_spec_augment=False,
        )
        config_name, cls = (
            ("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification")
            if name == "wav2vec2"
            else ("HubertConfig", "HubertForSequenceClassification")
        )
        module = train(Logits(_model(cls, _hf(config_name, **audio))), [x[:1200]], _ce(y[:1200]), 150)
        cal, ev = _split({"x": x}, 1200)
        return Case(name, family, module, cal, ev, y[1200:1400])
    if name in ("whisper_encoder", "ast"):
        x, y = mel_tones(1400, rng)
        if name == "whisper_encoder":
            import transformers

            config = _hf(
                "WhisperConfig",
                num_mel_bins=MELS,
                d_model=32,
                encoder_layers=2,
                encoder_attention_heads=2,
                encoder_ffn_dim=64,
                max_source_positions=FRAMES // 2,
                decoder_layers=1,
            )
            torch.manual_seed(0)
            module = PooledHead(transformers.WhisperForAudioClassification(config).encoder, 32, 8)
        else:
            config = _hf(
                "ASTConfig",
                **TINY_ENCODER,
                patch_size=8,
                frequency_stride=8,
                time_stride=8,
                max_length=FRAMES,
                num_mel_bins=MELS,
                num_labels=8,
            )
            module = Logits(_model("ASTForAudioClassification", config))
            x = np.ascontiguousarray(x.transpose(0, 2, 1))  # AST takes [N, time, mel]
        module = train(module, [x[:1200]], _ce(y[:1200]), 150)
        cal, ev = _split({"x": x}, 1200)
        return Case(name, family, module, cal, ev, y[1200:1400])
    if family == "text":
        ids, mask, y = keyword_text(1400, rng)
        kw: dict[str, Any] = dict(vocab_size=VOCAB, num_labels=4, max_position_embeddings=SEQ, pad_token_id=0)
        if name == "distilbert":
            config = _hf("DistilBertConfig", dim=32, n_layers=2, n_heads=2, hidden_dim=64, **kw)
            cls = "DistilBertForSequenceClassification"
        else:
            config = _hf(
                "BertConfig" if name == "bert" else "RobertaConfig",
                **TINY_ENCODER,
                **{**kw, "max_position_embeddings": SEQ + 2},
            )
            cls = "BertForSequenceClassification" if name == "bert" else "RobertaForSequenceClassification"
        module = train(TextLogits(_model(cls, config)), [ids[:1200], mask[:1200]], _ce(y[:1200]), 200)
        cal, ev = _split({"input_ids": ids, "attention_mask": mask}, 1200)
        return Case(name, family, module, cal, ev, y[1200:1400])
    x, mask, info = squares(1400, rng)
    if name in ("ssd_mnv3", "yolo"):
        return _detector(name, x, info)
    # segmentation: per-pixel background/object; labels are the masks (at the model's output resolution)
    if name == "segformer":
        config = _hf(
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            patch_sizes=[3, 3],
            strides=[2, 2],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
            num_labels=2,
        )
        module = Logits(_model("SegformerForSemanticSegmentation", config))
    elif name == "mobilevit_deeplab":
        config = _hf(
            "MobileViTConfig",
            image_size=IMAGE,
            hidden_sizes=[16, 24, 32],
            num_attention_heads=2,
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            aspp_out_channels=16,
            atrous_rates=[1, 2, 3],
            num_labels=2,
            output_stride=8,
        )
        module = Logits(_model("MobileViTForSemanticSegmentation", config))
    else:
        torch.manual_seed(0)
        module = LRASPP() if name == "lraspp_mnv3" else UNet()
    with torch.no_grad():
        side = module.eval()(torch.from_numpy(x[:1])).shape[-1]
    step = IMAGE // side
    small = mask[:, step // 2 :: step, step // 2 :: step]  # the mask at the output's resolution
    yt = torch.from_numpy(small)

    def seg_loss(out: Any, rows: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(out, yt[rows])

    module = train(module, [x[:1200]], seg_loss, 150)
    cal, ev = _split({"x": x}, 1200)
    return Case(name, family, module, cal, ev, small[1200:1400])


def _detector(name: str, x: np.ndarray, info: np.ndarray) -> Case:
    """SSD/YOLO-style heads trained on the squares: the cell holding the object's centre predicts its class
    and box; every other cell predicts background (SSD) or no object (YOLO)."""
    torch.manual_seed(0)
    module: nn.Module = SSDHead() if name == "ssd_mnv3" else YoloHead()
    info_t = torch.from_numpy(info)

    def targets(side: int, rows: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell of a side x side grid: the class index + 1 at the object's centre cell (else 0), the box."""
        obj = torch.zeros(len(rows), side, side, dtype=torch.long)
        r = info_t[rows]
        cx, cy = (r[:, 1] * side).long().clamp(0, side - 1), (r[:, 2] * side).long().clamp(0, side - 1)
        obj[torch.arange(len(rows)), cy, cx] = r[:, 0].long() + 1
        return obj, r[:, 1:4]

    if name == "ssd_mnv3":

        def loss(out: Any, rows: Any) -> torch.Tensor:
            scores, boxes = out
            total = torch.zeros(())
            offset = 0
            for side in (IMAGE // 8, IMAGE // 16):
                obj, box = targets(side, rows)
                cells = side * side * 2
                s = scores[:, offset : offset + cells].reshape(len(rows), side, side, 2, 2)[..., 0, :]
                b = boxes[:, offset : offset + cells].reshape(len(rows), side, side, 2, 4)[..., 0, :3]
                total = total + nn.functional.cross_entropy(s.permute(0, 3, 1, 2), (obj > 0).long())
                hit = obj > 0
                total = total + nn.functional.mse_loss(b[hit], box)
                offset += cells
            return total

    else:

        def loss(out: Any, rows: Any) -> torch.Tensor:
            total = torch.zeros(())
            for p in out:
                side = p.shape[-1]
                obj, box = targets(side, rows)
                total = total + nn.functional.binary_cross_entropy_with_logits(p[:, 4], (obj > 0).float())
                hit = obj > 0
                cls = p[:, 5:].permute(0, 2, 3, 1)[hit]
                total = total + nn.functional.cross_entropy(cls, obj[hit] - 1)
                total = total + nn.functional.mse_loss(p[:, :3].permute(0, 2, 3, 1)[hit], box)
            return total

    module = train(module, [x[:1200]], loss, 150)
    cal, ev = _split({"x": x}, 1200)
    return Case(name, "detection", module, cal, ev, None, class_axis=-1 if name == "ssd_mnv3" else 1)


# --- export -------------------------------------------------------------------------------------------------


def export(c: Case, folder: Path) -> tuple[Path, Path]:
    """``model.pt2`` (torch.export) and ``model.onnx`` (opset 17, the TorchScript exporter, inputs named as
    ``forward``'s parameters) in ``folder``, as ``tools/bench_torch_onnx.py`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    pt2, onnx_path = folder / "model.pt2", folder / "model.onnx"
    example = c.example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(c.module, example), str(pt2))
        torch.onnx.export(c.module, example, str(onnx_path), opset_version=17, dynamo=False, input_names=c.input_names)
    return pt2, onnx_path


def torch_outputs(c: Case) -> list[np.ndarray]:
    """PyTorch's float outputs on the evaluation inputs, one array per output, one sample at a time."""
    outs: list[list[np.ndarray]] = []
    n = len(next(iter(c.eval_x.values())))
    with torch.no_grad():
        for i in range(n):
            got = c.module(*(torch.from_numpy(a[i : i + 1]) for a in c.eval_x.values()))
            got = got if isinstance(got, tuple) else (got,)
            if not outs:
                outs = [[] for _ in got]
            for slot, t in zip(outs, got, strict=True):
                slot.append(t.numpy())
    return [np.concatenate(o) for o in outs]
