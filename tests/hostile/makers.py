"""Small, real seed files of every format, written from a torch DS-CNN (no TensorFlow needed).

Used by the hostile battery (pytest) and by the fuzzer (``python -m tests.fuzz.run``).
Every writer takes the model (``tests/conftest.py::build_tiny_dscnn``) and a path.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: File name of each seed, by reader; ``write_seeds`` writes them all.
SEED_NAMES = {
    "checkpoint": "m.pt",
    "checkpoint_legacy": "legacy.pth",
    "safetensors": "m.safetensors",
    "numpy": "k.npy",
    "npz": "k.npz",
    "onnx": "m.onnx",
    "tflite": "m.tflite",
    "keras": "m.h5",
    "keras3": "m.keras",
    "keras3_h5": "nested.h5",
    "keras3_real": "nested.keras",
    "tfjs": "tfjs/model.json",
    "tfjs_layers": "tfjs_layers/model.json",
    "torchscript": "script.pt",
    "pickled_model": "model.pth",
    "openvino": "openvino/model.xml",
    "ncnn": "ncnn/model.param",
    "tf_graphdef": "frozen.pb",
}


def depthwise_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The depthwise convolutions of ``model`` (module path, conv), in order."""
    from kernelatlas.harvest.torch_module import is_depthwise

    return [(n, m) for n, m in model.named_modules() if is_depthwise(m)]


def keras_kernel(conv: nn.Conv2d) -> np.ndarray:
    """PyTorch [C*mult,1,kh,kw] -> Keras [kh,kw,C,mult]."""
    w = conv.weight.detach().numpy()
    co, _, kh, kw = w.shape
    mult = conv.out_channels // conv.in_channels
    return w[:, 0].reshape(co // mult, mult, kh, kw).transpose(2, 3, 0, 1).copy()


# ----------------------------------------------------------------------------- torch family
def write_checkpoint(model: nn.Module, path: Path, *, legacy: bool = False) -> Path:
    torch.save(
        {"epoch": 1, "state_dict": model.state_dict()},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path


def write_torchscript(model: nn.Module, path: Path) -> Path:
    """``torch.jit.save`` of the scripted model (a TorchScript archive)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), path)
    return path


def write_pickled_model(model: nn.Module, path: Path) -> Path:
    """``torch.save`` of the whole model and an EMA copy (as Ultralytics saves them)."""
    import copy

    torch.save({"epoch": 1, "model": model, "ema": copy.deepcopy(model)}, path)
    return path


def write_safetensors(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def write_npy(model: nn.Module, path: Path) -> Path:
    np.save(path, depthwise_convs(model)[1][1].weight.detach().numpy()[:, 0])
    return path


def write_npz(model: nn.Module, path: Path) -> Path:
    arrays = {f"dw{n}": c.weight.detach().numpy()[:, 0] for n, c in depthwise_convs(model)}
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- ONNX
def onnx_model(model: nn.Sequential):
    """An ONNX graph of a Sequential DS-CNN built with onnx.helper: Conv/BN/Relu nodes; the
    first depthwise weight goes through fp16 + Cast, the second through int8
    DequantizeLinear (per channel), the others are plain initializers."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []
    x = "x"
    n_dw = 0
    for name, m in model.named_children():
        y = f"t{name}"
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().numpy()
            wname = f"w{name}"
            dw = m.groups > 1
            if dw and n_dw == 0:
                inits.append(numpy_helper.from_array(w.astype(np.float16), wname + "_h"))
                nodes.append(helper.make_node("Cast", [wname + "_h"], [wname], to=1))
            elif dw and n_dw == 1:
                s = (np.abs(w).reshape(len(w), -1).max(1) / 127).astype(np.float32)
                q = np.round(w / s[:, None, None, None]).astype(np.int8)
                inits += [numpy_helper.from_array(q, wname + "_q"),
                          numpy_helper.from_array(s, wname + "_s")]  # fmt: skip
                nodes.append(
                    helper.make_node(
                        "DequantizeLinear", [wname + "_q", wname + "_s"], [wname], axis=0
                    )
                )
            else:
                inits.append(numpy_helper.from_array(w, wname))
            n_dw += dw
            ins = [x, wname]
            if m.bias is not None:
                inits.append(numpy_helper.from_array(m.bias.detach().numpy(), f"b{name}"))
                ins.append(f"b{name}")
            pads = [int(p) for p in m.padding] * 2
            nodes.append(
                helper.make_node(
                    "Conv", ins, [y], name=f"conv{name}", group=m.groups, pads=pads,
                    strides=list(m.stride), dilations=list(m.dilation),
                )
            )  # fmt: skip
        elif isinstance(m, nn.BatchNorm2d):
            ins = [x]
            for a in ("weight", "bias", "running_mean", "running_var"):
                inits.append(numpy_helper.from_array(getattr(m, a).detach().numpy(), f"{a}{name}"))
                ins.append(f"{a}{name}")
            nodes.append(helper.make_node("BatchNormalization", ins, [y], epsilon=m.eps))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [x], [y]))
        else:
            break
        x = y
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_onnx(model: nn.Sequential, path: Path) -> Path:
    import onnx

    onnx.save(onnx_model(model), str(path))
    return path


def onnx_graph(weights: list[tuple[str, list[str]]], inits: dict[str, np.ndarray],
               extra_nodes: list | None = None, channels: int = 8):  # fmt: skip
    """A chain of depthwise ``Conv`` nodes whose weights are the tensors named in
    ``weights`` (``(weight name, [])``), made from the initializers ``inits`` and the nodes
    ``extra_nodes`` (Mul chains, broadcasts...): small hostile graphs."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = list(extra_nodes or [])
    x = "x"
    for i, (wname, _) in enumerate(weights):
        nodes.append(helper.make_node("Conv", [x, wname], [f"y{i}"], group=channels,
                                      name=f"dw{i}"))  # fmt: skip
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def onnx_mul_chain(depth: int = 60):
    """Each Mul squares the previous output (``c{i+1} = c{i} * c{i}``): folding without
    memoisation takes 2**depth steps. The result is all ones."""
    from onnx import helper

    chain = [helper.make_node("Mul", [f"c{i}", f"c{i}"], [f"c{i + 1}"]) for i in range(depth)]
    return onnx_graph([(f"c{depth}", [])], {"c0": np.ones((8, 1, 3, 3), np.float32)}, chain)


def onnx_broadcast(n_convs: int, channels: int, k: int, shared: bool = False):
    """``n_convs`` depthwise convs whose ``[channels,1,k,k]`` weights are broadcast by a Mul
    from two tiny initializers (one Mul each, or one shared Mul): a small file asking for
    ``n_convs * channels * k * k * 4`` bytes."""
    from onnx import helper

    inits = {
        "col": np.ones((channels, 1, 1, 1), np.float32),
        "row": np.ones((1, 1, k, k), np.float32),
    }
    muls = [
        helper.make_node("Mul", ["col", "row"], [f"w{i}"]) for i in range(1 if shared else n_convs)
    ]
    names = ["w0" if shared else f"w{i}" for i in range(n_convs)]
    return onnx_graph([(n, []) for n in names], inits, muls, channels)


def onnx_shared_initializer(n_convs: int, channels: int, k: int):
    """``n_convs`` depthwise convs all using one ``[channels,1,k,k]`` initializer."""
    inits = {"w": np.ones((channels, 1, k, k), np.float32)}
    return onnx_graph([("w", [])] * n_convs, inits, None, channels)


# ----------------------------------------------------------------------------- TFLite
_DEPTHWISE_CONV_2D, _DEQUANTIZE, _DENSIFY, _RESHAPE = 4, 6, 124, 22
_TFL_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 9}


def tflite_bytes(layers: list[dict]) -> bytes:
    """A TFLite flatbuffer with one DEPTHWISE_CONV_2D op per entry of ``layers``.

    Each entry: ``w`` [1, kh, kw, C] (float32, float16 or int8; or the raw bytes of
    TensorType ``ttype`` with ``shape``), optional ``scale`` (and ``zero``) per-channel
    quantisation of an integer ``w``, ``dequant`` (True: the weight goes
    through a DEQUANTIZE op), ``stride``, ``dilation``, and ``shape`` to declare a tensor
    shape that differs from the data (hostile files); ``sparse``: the
    :func:`tflite_sparse` encoding of ``w`` (then the stored tensor holds its values and a
    DENSIFY op makes the weight, before any DEQUANTIZE); ``runtime``: the weight is the
    output of a RESHAPE of a non-constant tensor (no data in the file).
    """
    import flatbuffers

    b = flatbuffers.Builder(4096)

    def ivec(values) -> int:
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    def table(fields: list[tuple[str, int, object]]) -> int:
        b.StartObject(max(s for _, s, _ in fields) + 1)
        for kind, slot, v in fields:
            getattr(b, f"Prepend{kind}Slot")(slot, v, 0 if kind != "UOffsetTRelative" else 0)
        return b.EndObject()

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for o in reversed(items):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    buffers = [table([("UOffsetTRelative", 0, b.CreateByteVector(b""))])]  # buffer 0: empty
    tensors: list[int] = []
    ops: list[int] = []

    def tensor(shape, ttype: int, buf: int, name: str, quant: int | None = None,
               sparsity: int | None = None) -> int:  # fmt: skip
        sh, nm = ivec(shape), b.CreateString(name)
        fields = [("UOffsetTRelative", 0, sh), ("Int8", 1, ttype), ("Uint32", 2, buf),
                  ("UOffsetTRelative", 3, nm)]  # fmt: skip
        if quant is not None:
            fields.append(("UOffsetTRelative", 4, quant))
        if sparsity is not None:
            fields.append(("UOffsetTRelative", 6, sparsity))
        tensors.append(table(fields))
        return len(tensors) - 1

    def sparsity_table(sp: dict) -> int:
        dims = []
        for level in sp["dims"]:
            if level[0] == "dense":
                dims.append(table([("Int8", 0, 0), ("Int32", 1, level[1])]))
                continue
            _, seg, idx, kind = level  # kind: 1 Int32Vector, 2 Uint16Vector, 3 Uint8Vector
            np_kind = {1: np.int32, 2: np.uint16, 3: np.uint8}[kind]
            unions = [table([("UOffsetTRelative", 0, b.CreateNumpyVector(np.asarray(v, np_kind)))])
                      for v in (seg, idx)]  # fmt: skip
            dims.append(table([("Int8", 0, 1), ("Uint8", 2, kind), ("UOffsetTRelative", 3, unions[0]),
                               ("Uint8", 4, kind), ("UOffsetTRelative", 5, unions[1])]))  # fmt: skip
        fields = [
            ("UOffsetTRelative", 0, ivec(sp["order"])),
            ("UOffsetTRelative", 2, offsets(dims)),
        ]
        if len(sp["block_map"]):
            fields.append(("UOffsetTRelative", 1, ivec(sp["block_map"])))
        return table(fields)

    for i, layer in enumerate(layers):
        w = np.ascontiguousarray(layer["w"])
        shape = layer.get("shape", w.shape)
        sp = layer.get("sparse")
        data = b.CreateByteVector((sp["values"] if sp else w).tobytes())
        buffers.append(table([("UOffsetTRelative", 0, data)]))
        quant = None
        if "scale" in layer:
            sc = b.CreateNumpyVector(np.asarray(layer["scale"], np.float32))
            zp = b.CreateNumpyVector(np.asarray(layer.get("zero", 0 * layer["scale"]), np.int64))
            quant = table([("UOffsetTRelative", 2, sc), ("UOffsetTRelative", 3, zp),
                           ("Int32", 6, layer.get("quant_dim", 3))])  # fmt: skip
        x = tensor([1, 8, 8, shape[-1]], 0, 0, f"x{i}")
        ttype = layer.get("ttype", _TFL_TYPES.get(w.dtype))  # raw bytes of another type
        stored = tensor(shape, ttype, len(buffers) - 1, f"dw{i}/kernel", quant,
                        sparsity_table(sp) if sp else None)  # fmt: skip
        if sp:  # DENSIFY (opcode index 2): the dense weight, still in the stored type
            dense = tensor(shape, ttype, 0, f"dw{i}/kernel_densify", quant)
            ops.append(table([("Uint32", 0, 2), ("UOffsetTRelative", 1, ivec([stored])),
                              ("UOffsetTRelative", 2, ivec([dense]))]))  # fmt: skip
            stored = dense
        if layer.get("runtime"):  # RESHAPE (opcode index 3) of an activation: no data
            src = tensor(shape, 0, 0, f"dw{i}/computed")
            stored = tensor(shape, 0, 0, f"dw{i}/kernel_reshape")
            ops.append(table([("Uint32", 0, 3), ("UOffsetTRelative", 1, ivec([src])),
                              ("UOffsetTRelative", 2, ivec([stored]))]))  # fmt: skip
        if layer.get("dequant"):
            wt = tensor(shape, 0, 0, f"dw{i}/kernel_dequant")
            ops.append(table([("Uint32", 0, 1), ("UOffsetTRelative", 1, ivec([stored])),
                              ("UOffsetTRelative", 2, ivec([wt]))]))  # fmt: skip
        else:
            wt = stored
        y = tensor([1, 8, 8, shape[-1]], 0, 0, f"y{i}")
        s, d = layer.get("stride", 1), layer.get("dilation", 1)
        opts = table([("Int32", 1, s), ("Int32", 2, s), ("Int32", 3, 1),
                      ("Int32", 5, d), ("Int32", 6, d)])  # fmt: skip
        ops.append(table([("Uint32", 0, 0), ("UOffsetTRelative", 1, ivec([x, wt])),
                          ("UOffsetTRelative", 2, ivec([y])), ("Uint8", 3, 2),
                          ("UOffsetTRelative", 4, opts)]))  # fmt: skip
    codes = [table([("Int8", 0, min(c, 127)), ("Int32", 2, 1), ("Int32", 3, c)])
             for c in (_DEPTHWISE_CONV_2D, _DEQUANTIZE, _DENSIFY, _RESHAPE)]  # fmt: skip
    tv, ov = offsets(tensors), offsets(ops)
    sg = table([("UOffsetTRelative", 0, tv), ("UOffsetTRelative", 3, ov)])
    cv, sv, bv = offsets(codes), offsets([sg]), offsets(buffers)
    model = table([("Uint32", 0, 3), ("UOffsetTRelative", 1, cv), ("UOffsetTRelative", 2, sv),
                   ("UOffsetTRelative", 4, bv)])  # fmt: skip
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def tflite_sparse(w: np.ndarray, *, block: int = 1, index_kind: int = 1) -> dict:
    """TFLite's sparsity encoding of a ``[1, kh, kw, C]`` weight, as the converter writes it
    (``face_detection_full_range_sparse.tflite``): dimensions 0-2 DENSE, the channels
    SPARSE_CSR; with ``block > 1`` the channels are cut into blocks of that size, the block
    dimension DENSE (traversal order ``0..4``, block map ``[3]``). The ``sparse`` entry of a
    :func:`tflite_bytes` layer: the stored values and the dimension metadata."""
    lead = int(np.prod(w.shape[:3]))
    c = w.shape[3]
    x = w.reshape(lead, c // block, block)  # parents x CSR positions x block
    keep = np.any(x != 0, axis=2)
    seg = np.concatenate([[0], np.cumsum(keep.sum(1))])
    idx = np.nonzero(keep)[1]
    dims = [("dense", int(d)) for d in w.shape[:3]] + [("csr", seg, idx, index_kind)]
    order, block_map = [0, 1, 2, 3], []
    if block > 1:
        dims.append(("dense", block))
        order, block_map = [0, 1, 2, 3, 4], [3]
    return {"values": np.ascontiguousarray(x[keep]), "dims": dims, "order": order,
            "block_map": block_map}  # fmt: skip


def tflite_layers(model: nn.Module) -> list[dict]:
    """The model's depthwise kernels as TFLite layers: fp32, fp16 via DEQUANTIZE, int8."""
    out = []
    for i, (_, conv) in enumerate(depthwise_convs(model)):
        k = keras_kernel(conv)  # [kh, kw, C, mult]
        kh, kw, c, mult = k.shape
        w = k.reshape(1, kh, kw, c * mult)
        layer: dict = {"stride": conv.stride[0], "dilation": conv.dilation[0]}
        if i % 3 == 1:
            layer.update(w=w.astype(np.float16), dequant=True)
        elif i % 3 == 2:
            scale = np.abs(w).reshape(-1, c * mult).max(0) / 127 + 1e-8
            layer.update(w=np.round(w / scale).astype(np.int8), scale=scale)
        else:
            layer.update(w=w.astype(np.float32))
        out.append(layer)
    return out


def write_tflite(model: nn.Module, path: Path) -> Path:
    path.write_bytes(tflite_bytes(tflite_layers(model)))
    return path


# ----------------------------------------------------------------------------- Keras
def _keras_config(model: nn.Module) -> dict:
    return {"class_name": "Sequential", "config": {"name": "m", "layers": [
        {"class_name": "DepthwiseConv2D",
         "config": {"name": f"dw{n}", "strides": list(c.stride), "dilation_rate": list(c.dilation)}}
        for n, c in depthwise_convs(model)]}}  # fmt: skip


def write_h5(model: nn.Module, path: Path) -> Path:
    """Keras 2 layout: model_weights/<layer>/<layer>/depthwise_kernel:0 + model_config."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(_keras_config(model))
        mw = f.create_group("model_weights")
        names = [f"dw{n}" for n, _ in depthwise_convs(model)]
        mw.attrs["layer_names"] = [n.encode() for n in names]
        for n, (_, conv) in zip(names, depthwise_convs(model), strict=True):
            g = mw.create_group(n)
            g.attrs["weight_names"] = [f"{n}/depthwise_kernel:0".encode()]
            g.create_dataset(f"{n}/depthwise_kernel:0", data=keras_kernel(conv))
    return path


def write_keras3(model: nn.Module, path: Path) -> Path:
    """Keras 3 ``.keras`` archive: config.json + model.weights.h5 (layers/<name>/vars/0)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for n, conv in depthwise_convs(model):
            f.create_group(f"layers/dw{n}/vars").create_dataset("0", data=keras_kernel(conv))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(_keras_config(model)))
        zf.writestr("model.weights.h5", buf.getvalue())
    return path


# Keras 3 as it really saves a transfer-learning model: a Functional backbone (with a
# Functional neck inside it) nested in a Functional model, plus optimizer state.
def _k3(cls: str, name: str, **cfg) -> dict:
    return {"module": "keras.layers", "class_name": cls, "config": {"name": name, **cfg},
            "registered_name": None}  # fmt: skip


def keras3_nested(model: nn.Module) -> tuple[dict, list[tuple[str, str, str, dict]]]:
    """The config of the nested Keras 3 model built around the depthwise convs of
    ``model`` (3x3, 5x5 x2 stride 2, 1x5 as a SeparableConv2D, 1x1, 3x3 dilation 2), and its
    variables: ``(scope/layer, class, var name, {h5 vars index: array})``."""
    convs = [c for _, c in depthwise_convs(model)]
    k = [keras_kernel(c) for c in convs]
    stem = np.asarray(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.detach())
    stem_k = stem.transpose(2, 3, 1, 0).copy()  # [3, 3, 3, 8]: a "kernel", not depthwise
    neck = _k3("Functional", "neck", layers=[
        _k3("InputLayer", "neck_in"),
        _k3("SeparableConv2D", "sep_1x5", strides=[1, 1], dilation_rate=[1, 1]),
        _k3("DepthwiseConv2D", "dw_1x1", strides=[1, 1], dilation_rate=[1, 1]),
    ])  # fmt: skip
    backbone = _k3("Functional", "backbone", layers=[
        _k3("InputLayer", "backbone_in"),
        _k3("DepthwiseConv2D", "block_1_depthwise", strides=[1, 1], dilation_rate=[1, 1]),
        _k3("BatchNormalization", "block_1_depthwise_BN"),
        _k3("Conv2D", "block_1_project"),
        _k3("DepthwiseConv2D", "block_2_depthwise", strides=[2, 2], dilation_rate=[1, 1],
            depth_multiplier=2),
        neck,
    ])  # fmt: skip
    config = _k3("Functional", "transfer", layers=[
        _k3("InputLayer", "input_layer"), _k3("Conv2D", "stem"), backbone,
        _k3("DepthwiseConv2D", "head_dw", strides=[1, 1], dilation_rate=[2, 2]),
        _k3("GlobalAveragePooling2D", "gap"), _k3("Dense", "head"),
    ])  # fmt: skip
    f32 = np.float32
    variables = [
        ("stem", "Conv2D", [("kernel", stem_k)]),
        ("backbone/block_1_depthwise", "DepthwiseConv2D",
         [("kernel", k[0]), ("bias", np.zeros(8, f32))]),
        ("backbone/block_1_depthwise_BN", "BatchNormalization", [("gamma", np.ones(8, f32))]),
        ("backbone/block_1_project", "Conv2D", [("kernel", np.ones((1, 1, 8, 16), f32))]),
        ("backbone/block_2_depthwise", "DepthwiseConv2D", [("kernel", k[1])]),
        ("backbone/neck/sep_1x5", "SeparableConv2D",
         [("depthwise_kernel", k[2]), ("pointwise_kernel", np.ones((1, 1, 32, 32), f32)),
          ("bias", np.zeros(32, f32))]),
        ("backbone/neck/dw_1x1", "DepthwiseConv2D", [("kernel", k[3])]),
        ("head_dw", "DepthwiseConv2D", [("kernel", k[4])]),
        ("head", "Dense", [("kernel", np.ones((32, 10), f32))]),
    ]  # fmt: skip
    return config, variables


def _adam_moments(variables) -> dict[str, np.ndarray]:
    """Depthwise-shaped optimizer state (Keras 3 names): must never be harvested."""
    out = {"iteration": np.array(7, np.int64)}
    for path, _, arrays in variables:
        base = path.rsplit("/", 1)[-1]
        for var, arr in arrays:
            out[f"{base}_{var}_momentum"] = arr * 0.1 + 1.0
            out[f"{base}_{var}_velocity"] = arr**2 + 2.0
    return out


def write_keras3_h5(model: nn.Module, path: Path) -> Path:
    """Keras 3 legacy ``model.save('m.h5')``: ``model_weights/<top layer>`` groups whose
    ``weight_names`` are Keras 3 variable paths (``block_1_depthwise/kernel``), the classes in
    ``model_config``, and ``optimizer_weights/`` with depthwise-shaped Adam moments."""
    import h5py

    config, variables = keras3_nested(model)
    top_names = [lay["config"]["name"] for lay in config["config"]["layers"]]
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "3.6.0"
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["training_config"] = json.dumps({"optimizer_config": {"class_name": "Adam"}})
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [n.encode() for n in top_names]
        groups = {n: mw.create_group(n) for n in top_names}
        names: dict[str, list[bytes]] = {n: [] for n in top_names}
        for vpath, _, arrays in variables:
            top, layer = vpath.split("/", 1)[0], vpath.rsplit("/", 1)[-1]
            for var, arr in arrays:
                wname = f"{layer}/{var}"
                groups[top].create_dataset(wname, data=arr)
                names[top].append(wname.encode())
        for n in top_names:
            groups[n].attrs["weight_names"] = names[n]
        mw.create_group("top_level_model_weights").attrs["weight_names"] = []
        ow = f.create_group("optimizer_weights")
        moments = _adam_moments(variables)
        ow.attrs["weight_names"] = [f"adam/{n}".encode() for n in moments]
        for n, arr in moments.items():
            ow.create_dataset(f"adam/{n}", data=arr)
    return path


def write_keras3_real(model: nn.Module, path: Path) -> Path:
    """Keras 3 ``model.save('m.keras')`` as Keras writes it: groups named by class and
    position per container (``layers/functional/layers/depthwise_conv2d_1/vars``), tagged
    with the layer name, and ``optimizer/vars`` with depthwise-shaped moments."""
    import h5py

    from kernelatlas.harvest.keras_h5 import _snake

    config, variables = keras3_nested(model)
    by_scope = {v[0]: v for v in variables}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:

        def container(layers: list, prefix: str, scope: str) -> None:
            used: dict[str, int] = {}
            for lay in layers:
                snake = _snake(lay["class_name"])
                n = used.get(snake)
                used[snake] = 0 if n is None else n + 1
                gpath = f"{prefix}/{snake}" if n is None else f"{prefix}/{snake}_{n + 1}"
                name = lay["config"]["name"]
                vars_ = f.create_group(f"{gpath}/vars")
                vars_.attrs["name"] = name
                key = f"{scope}/{name}" if scope else name
                for i, (_, arr) in enumerate(by_scope.get(key, ("", "", []))[2]):
                    vars_.create_dataset(str(i), data=arr)
                if "layers" in lay["config"]:
                    container(lay["config"]["layers"], f"{gpath}/layers", key)

        container(config["config"]["layers"], "layers", "")
        opt = f.create_group("optimizer/vars")
        for i, arr in enumerate(_adam_moments(variables).values()):
            opt.create_dataset(str(i), data=arr)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buf.getvalue())
    return path


# ----------------------------------------------------------------------------- TF.js
def _tfjs_quantise(w: np.ndarray, quant: str | None) -> tuple[bytes, dict | None]:
    """``w`` stored as TF.js does: fp32, float16, or affine uint8/uint16 (min + scale*q)."""
    if quant is None:
        return w.astype("<f4").tobytes(), None
    if quant == "float16":
        return w.astype("<f2").tobytes(), {"dtype": "float16"}
    levels = 255 if quant == "uint8" else 65535
    lo, hi = float(w.min()), float(w.max())
    scale = (hi - lo) / levels or 1.0
    q = np.clip(np.round((w - lo) / scale), 0, levels).astype("u1" if levels == 255 else "<u2")
    return q.tobytes(), {"dtype": quant, "scale": scale, "min": lo}


def tfjs_dequantised(w: np.ndarray, quant: str | None) -> np.ndarray:
    """What a reader must get back from :func:`_tfjs_quantise` (float32)."""
    raw, q = _tfjs_quantise(w, quant)
    if q is None:
        return w.astype(np.float32)
    if q["dtype"] == "float16":
        return np.frombuffer(raw, "<f2").reshape(w.shape).astype(np.float32)
    arr = np.frombuffer(raw, "u1" if q["dtype"] == "uint8" else "<u2").reshape(w.shape)
    return arr.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])


def _ilist(values) -> dict:
    return {"list": {"i": [str(int(v)) for v in values]}}


def write_tfjs(model: nn.Module, folder: Path, *, kind: str = "graph", quant: str | None = None,
               shard_bytes: int = 1000, prefix: str = "group1") -> Path:  # fmt: skip
    """A TF.js model of ``model``'s depthwise convs in ``folder`` (``model.json`` + shards of
    ``shard_bytes``): ``kind`` is ``graph`` (DepthwiseConv2dNative / Fused... nodes, one
    filter behind an Identity), ``layers`` (the nested Keras 3 config, optimizer weights in
    group ``optimizer``) or ``weights`` (a bare face-api-style manifest list)."""
    folder.mkdir(parents=True, exist_ok=True)
    convs = [(n, c) for n, c in depthwise_convs(model)]
    stem = np.asarray(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.detach())
    entries: list[tuple[str, np.ndarray, str | None, str | None]] = []  # name, value, quant, group
    topology: dict | None = None
    if kind == "graph":
        nodes = [{"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}},
                 {"name": "stem/w", "op": "Const"},
                 {"name": "stem", "op": "Conv2D", "input": ["x", "stem/w"]}]  # fmt: skip
        entries.append(("stem/w", stem.transpose(2, 3, 1, 0), quant, None))
        prev = "stem"
        for i, (_, conv) in enumerate(convs):
            w = f"dw{i}/filter"
            nodes.append({"name": w, "op": "Const"})
            src = w
            if i == 1:
                nodes.append({"name": f"{w}/read", "op": "Identity", "input": [w]})
                src = f"{w}/read:0"
            op = "FusedDepthwiseConv2dNative" if i % 2 == 0 else "DepthwiseConv2dNative"
            s, d = conv.stride[0], conv.dilation[0]
            nodes.append({"name": f"dw{i}", "op": op, "input": [prev, src, "^x"],
                          "attr": {"strides": _ilist([1, s, s, 1]),
                                   "dilations": _ilist([1, d, d, 1])}})  # fmt: skip
            entries.append((w, keras_kernel(conv), quant, None))
            prev = f"dw{i}"
        entries.append(("shape", np.array([1, 32], np.int32), None, None))
        topology = {"node": nodes, "library": {}, "versions": {"producer": 1}}
        doc: dict | list = {"format": "graph-model", "generatedBy": "kernelatlas tests",
                            "convertedBy": "TensorFlow.js Converter v4", "modelTopology": topology}  # fmt: skip
    elif kind == "layers":
        config, variables = keras3_nested(model)
        for vpath, _, arrays in variables:
            layer = vpath.rsplit("/", 1)[-1]
            for var, arr in arrays:
                entries.append((f"{layer}/{var}", arr, quant, None))
        for n, arr in _adam_moments(variables).items():  # optimizer state, same shapes
            if arr.ndim == 4:
                entries.insert(0, (n, arr, quant, "optimizer"))
        decoy = np.full_like(keras_kernel(convs[-1][1]), 9.0)  # named like a kernel
        entries.insert(0, ("head_dw/kernel", decoy, quant, "optimizer"))
        doc = {"format": "layers-model", "generatedBy": "keras v3.6.0",
               "modelTopology": {"keras_version": "3.6.0", "backend": "tensorflow",
                                 "model_config": config}}  # fmt: skip
    else:
        for i, (_, conv) in enumerate(convs):
            entries.append((f"conv{i}/depthwise_filter", keras_kernel(conv), quant, None))
            entries.append((f"conv{i}/bias", np.zeros(conv.out_channels, np.float32), None, None))
        doc = []
    blob = bytearray()
    specs = []
    for name, arr, q, group in entries:
        if arr.dtype == np.int32:
            raw, qspec = arr.astype("<i4").tobytes(), None
            spec = {"name": name, "shape": list(arr.shape), "dtype": "int32"}
        else:
            raw, qspec = _tfjs_quantise(np.asarray(arr, np.float32), q)
            spec = {"name": name, "shape": list(arr.shape), "dtype": "float32"}
            if qspec:
                spec["quantization"] = qspec
        if group:
            spec["group"] = group
        specs.append(spec)
        blob += raw
    n_shards = max(1, -(-len(blob) // shard_bytes))
    paths = []
    for j in range(n_shards):
        name = f"{prefix}-shard{j + 1}of{n_shards}.bin"
        (folder / name).write_bytes(bytes(blob[j * shard_bytes : (j + 1) * shard_bytes]))
        paths.append(name)
    manifest = [{"paths": paths, "weights": specs}]
    if isinstance(doc, list):
        path = folder / "weights_manifest.json"
        path.write_text(json.dumps(manifest))
    else:
        doc["weightsManifest"] = manifest
        path = folder / "model.json"
        path.write_text(json.dumps(doc))
    return path


# ----------------------------------------------------------------------------- OpenVINO IR
class OpenVINOIR:
    """A tiny OpenVINO IR v11 writer: ``add`` a layer, ``connect`` ports, ``save`` the pair.

    ``const`` puts an array's bytes in the ``.bin`` (u4/i4: two a byte, low nibble first, as
    OpenVINO writes them). Layouts copied from IRs written by openvino 2026.4 and NNCF.
    """

    _ET = {"float32": "f32", "float16": "f16", "int8": "i8", "uint8": "u8", "int64": "i64"}

    def __init__(self) -> None:
        self.layers: list[str] = []
        self.edges: list[tuple[int, int, int, int]] = []
        self.blob = bytearray()

    def add(self, type_: str, name: str, data: dict | None = None,
            inputs: tuple[list[int], ...] = (), out: list[int] | None = None) -> int:  # fmt: skip
        lid = len(self.layers)
        attrs = " ".join(f'{k}="{v}"' for k, v in (data or {}).items())
        body = f"<data {attrs}/>" if data else ""
        if inputs:
            body += "<input>" + "".join(
                f'<port id="{i}" precision="FP32">' + "".join(f"<dim>{d}</dim>" for d in dims) + "</port>"
                for i, dims in enumerate(inputs)) + "</input>"  # fmt: skip
        if out is not None:
            body += f'<output><port id="{len(inputs)}" precision="FP32">' + "".join(
                f"<dim>{d}</dim>" for d in out) + "</port></output>"  # fmt: skip
        self.layers.append(
            f'<layer id="{lid}" name="{name}" type="{type_}" version="opset1">{body}</layer>'
        )
        return lid

    def const(self, name: str, arr: np.ndarray, element_type: str | None = None) -> int:
        arr = np.ascontiguousarray(arr)
        et = element_type or self._ET[arr.dtype.name]
        if et in ("u4", "i4"):
            nib = (arr.reshape(-1).astype(np.int64) & 0x0F).astype(np.uint8)
            nib = np.concatenate([nib, np.zeros(nib.size % 2, np.uint8)])
            raw = (nib[0::2] | (nib[1::2] << 4)).tobytes()
        else:
            raw = arr.tobytes()
        data = {"element_type": et, "shape": ", ".join(map(str, arr.shape)),
                "offset": len(self.blob), "size": len(raw)}  # fmt: skip
        self.blob += raw
        return self.add("Const", name, data, out=list(arr.shape))

    def op(self, type_: str, name: str, *srcs: int, data: dict | None = None) -> int:
        lid = self.add(type_, name, data, inputs=tuple([] for _ in srcs), out=[])
        for port, src in enumerate(srcs):
            self.connect(src, lid, port)
        return lid

    def connect(self, src: int, dst: int, port: int) -> None:
        self.edges.append((src, self._out_port(src), dst, port))

    def _out_port(self, lid: int) -> int:
        return self.layers[lid].count('<port id="') - 1 if "<input>" in self.layers[lid] else 0

    def xml(self) -> str:
        edges = "".join(
            f'<edge from-layer="{a}" from-port="{ap}" to-layer="{b}" to-port="{bp}"/>'
            for a, ap, b, bp in self.edges
        )
        return (
            '<?xml version="1.0"?>\n<net name="tiny" version="11">\n<layers>'
            + "\n".join(self.layers) + f"</layers>\n<edges>{edges}</edges>\n</net>\n"
        )  # fmt: skip

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.xml())
        path.with_suffix(".bin").write_bytes(bytes(self.blob))
        return path


def openvino_weight(ir: OpenVINOIR, name: str, w: np.ndarray, weights: str) -> int:
    """The op that yields a ``[G, mult, 1, kh, kw]`` float weight, stored as ``weights``:
    ``f32``, ``f16`` (Const f16 -> Convert), ``int8`` (NNCF INT8_SYM: i8 -> Convert f16 ->
    Multiply f16 scale -> Convert f32), ``uint8`` (INT8_ASYM: ... Subtract a u8 zero point
    first), ``fq`` (FakeQuantize, 255 levels), ``reshape`` (a ``[C, 1, kh, kw]`` Const
    through Reshape)."""
    f32 = {"destination_type": "f32"}
    f16 = {"destination_type": "f16"}
    g = w.shape[0]
    if weights == "f32":
        return ir.const(name, w.astype(np.float32))
    if weights == "f16":
        return ir.op(
            "Convert", name, ir.const(f"{name}_compressed", w.astype(np.float16)), data=f32
        )
    if weights == "reshape":
        flat = ir.const(name, w.reshape(-1, 1, *w.shape[-2:]).astype(np.float32))
        target = ir.const(f"{name}/shape", np.array(w.shape, np.int64))
        return ir.op("Reshape", f"{name}/reshape", flat, target, data={"special_zero": "false"})
    amax = np.abs(w).reshape(g, -1).max(1).reshape(g, 1, 1, 1, 1).astype(np.float32)
    if weights == "fq":
        lo, hi = ir.const(f"{name}/lo", -amax), ir.const(f"{name}/hi", amax)
        return ir.op("FakeQuantize", f"{name}/fq", ir.const(name, w.astype(np.float32)), lo, hi,
                     lo, hi, data={"levels": 255, "auto_broadcast": "numpy"})  # fmt: skip
    scale = (amax / 127).astype(np.float16)
    if weights == "int8":
        q = ir.op("Convert", f"{name}/q", ir.const(name, np.round(w / scale).astype(np.int8)),
                  data=f16)  # fmt: skip
    elif weights == "uint8":
        zp = np.full(amax.shape, 128, np.uint8)
        qv = ir.const(name, (np.round(w / scale) + 128).clip(0, 255).astype(np.uint8))
        q = ir.op("Subtract", f"{name}/sub", ir.op("Convert", f"{name}/q", qv, data=f16),
                  ir.op("Convert", f"{name}/zp", ir.const(f"{name}/zp", zp), data=f16))  # fmt: skip
    else:
        raise ValueError(weights)
    mul = ir.op("Multiply", f"{name}/scale", q, ir.const(f"{name}/s", scale))
    return ir.op("Convert", f"{name}/f32", mul, data=f32)


def write_openvino(model: nn.Module, path: Path, *, weights: str = "f16") -> Path:
    """An OpenVINO IR (``path`` + ``.bin``) of ``model``'s depthwise convs, each a
    ``GroupConvolution`` on its own ``Parameter`` (weights stored as ``weights``, see
    :func:`openvino_weight`), plus a plain ``Convolution`` (never depthwise)."""
    ir = OpenVINOIR()
    for name, conv in depthwise_convs(model):
        w = conv.weight.detach().numpy()
        mult = conv.out_channels // conv.in_channels
        w5 = w.reshape(conv.in_channels, mult, 1, *w.shape[-2:])
        x = ir.add("Parameter", f"x{name}", {"shape": f"1,{conv.in_channels},16,16",
                                               "element_type": "f32"}, out=[1, conv.in_channels, 16, 16])  # fmt: skip
        wt = openvino_weight(ir, f"features.{name}.weight", w5, weights)
        s, d = conv.stride[0], conv.dilation[0]
        gc = ir.add("GroupConvolution", f"features.{name}/GroupConvolution",
                    {"strides": f"{s}, {s}", "dilations": f"{d}, {d}", "pads_begin": "0, 0",
                     "pads_end": "0, 0", "auto_pad": "explicit"},
                    inputs=([1, conv.in_channels, 16, 16], list(w5.shape)), out=[])  # fmt: skip
        ir.connect(x, gc, 0)
        ir.connect(wt, gc, 1)
        ir.connect(gc, ir.add("Result", f"y{name}", inputs=([],)), 0)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    x = ir.add(
        "Parameter", "image", {"shape": "1,3,16,16", "element_type": "f32"}, out=[1, 3, 16, 16]
    )
    cw = ir.const("stem.weight", stem.weight.detach().numpy())
    conv = ir.add("Convolution", "stem", {"strides": "1, 1", "dilations": "1, 1",
                                          "pads_begin": "1, 1", "pads_end": "1, 1"},
                  inputs=([1, 3, 16, 16], list(stem.weight.shape)), out=[])  # fmt: skip
    ir.connect(x, conv, 0)
    ir.connect(cw, conv, 1)
    ir.connect(conv, ir.add("Result", "ystem", inputs=([],)), 0)
    return ir.save(path)


# ----------------------------------------------------------------------------- ncnn
NCNN_F16, NCNN_I8 = 0x01306B47, 0x000D4B38


def ncnn_buffer(w: np.ndarray, weights: str) -> bytes:
    """One flagged ncnn weight buffer (as ``ModelBin::load(w, 0)`` reads it): ``f32`` (flag
    0), ``f16``, ``int8`` (the caller writes the scales) or ``table`` (a 256-entry float
    table and uint8 indexes); padded to 4 bytes."""
    flat = np.asarray(w, np.float32).reshape(-1)
    if weights == "f32":
        raw = np.uint32(0).tobytes() + flat.tobytes()
    elif weights == "f16":
        raw = np.uint32(NCNN_F16).tobytes() + flat.astype("<f2").tobytes()
    elif weights == "int8":
        raw = np.uint32(NCNN_I8).tobytes() + flat.astype(np.int8).tobytes()
    elif weights == "table":
        table = np.linspace(flat.min(), flat.max(), 256, dtype=np.float32)
        index = np.abs(flat[:, None] - table[None]).argmin(1).astype(np.uint8)
        raw = bytes([1, 2, 3, 4]) + table.tobytes() + index.tobytes()
    else:
        raise ValueError(weights)
    return raw + bytes(-len(raw) % 4)


def ncnn_int8(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """ncnn2int8's quantisation of a depthwise ``[C, kh, kw]``, one scale a group:
    ``(q, scale)`` with ``q = round(w * scale)``."""
    scale = (127 / np.abs(w).reshape(group, -1).max(1)).astype(np.float32)
    per = np.repeat(scale, len(w) // group)
    return np.round(w * per[:, None, None]).clip(-127, 127), scale


def write_ncnn(model: nn.Module, path: Path, *, weights: str = "f16") -> Path:
    """An ncnn model (``path`` + ``.bin``) of ``model``'s convs: the stem ``Convolution`` and
    a ``BatchNorm``, each depthwise conv as ``ConvolutionDepthWise`` (weights stored as
    ``weights``; ``int8`` with per-channel scales, ``int8_scale_term=1``), a ``Scale`` and a
    ``PReLU`` between them, an ``InnerProduct`` last: every weight's bytes in layer order."""
    lines, blob = [], bytearray()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    sw = stem.weight.detach().numpy()
    lines.append("Input in 0 1 data 0=16 1=16 2=3")
    lines.append(f"Convolution stem 1 1 data s0 0={sw.shape[0]} 1=3 4=1 5=1 6={sw.size}")
    blob += ncnn_buffer(sw, "f32") + np.arange(sw.shape[0], dtype="<f4").tobytes()
    lines.append(f"BatchNorm bn 1 1 s0 s1 0={sw.shape[0]}")
    blob += np.ones(4 * sw.shape[0], "<f4").tobytes()
    prev = "s1"
    for i, (name, conv) in enumerate(depthwise_convs(model)):
        w = conv.weight.detach().numpy()[:, 0]
        c_out, kh, kw = w.shape
        term = " 8=1" if weights == "int8" else ""
        lines.append(
            f"ConvolutionDepthWise features.{name} 1 1 {prev} d{i} 0={c_out} 1={kw} 11={kh} "
            f"2={conv.dilation[1]} 12={conv.dilation[0]} 3={conv.stride[1]} 13={conv.stride[0]} "
            f"5=1 6={w.size} 7={conv.in_channels}{term} -23310=2,0.0,6.0 9=3"
        )
        if weights == "int8":
            q, scale = ncnn_int8(w, conv.in_channels)
            blob += ncnn_buffer(q, "int8") + np.zeros(c_out, "<f4").tobytes()
            blob += scale.astype("<f4").tobytes() + np.float32(64.0).tobytes()
        else:
            blob += ncnn_buffer(w, weights) + np.zeros(c_out, "<f4").tobytes()
        lines.append(f"Scale sc{i} 1 1 d{i} e{i} 0={c_out} 1=1")
        blob += np.ones(2 * c_out, "<f4").tobytes()
        lines.append(f"PReLU pr{i} 1 1 e{i} f{i} 0=1")
        blob += np.float32(0.25).tobytes()
        prev = f"f{i}"
    lines.append(f"InnerProduct fc 1 1 {prev} out 0=10 1=1 2=40")
    blob += ncnn_buffer(np.ones(40), "f16") + np.zeros(10, "<f4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"7767517\n{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    path.with_suffix(".bin").write_bytes(bytes(blob))
    return path


# ----------------------------------------------------------------------------- TF GraphDef
def pb_varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb_field(num: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint (int) or a length-delimited payload (bytes)."""
    if isinstance(payload, int):
        return pb_varint(num << 3) + pb_varint(payload)
    return pb_varint(num << 3 | 2) + pb_varint(len(payload)) + payload


def tf_tensor(arr: np.ndarray, *, values: str = "content") -> bytes:
    """A TensorProto: ``content`` (float32 tensor_content), ``half`` (DT_HALF half_val
    bits, packed), ``float_val`` (packed float_val; one value broadcasts)."""
    shape = b"".join(pb_field(2, pb_field(1, int(d))) for d in arr.shape)
    if values == "content":
        body = pb_field(1, 1) + pb_field(2, shape) + pb_field(4, arr.astype("<f4").tobytes())
    elif values == "half":
        bits = arr.astype("<f2").view("<u2").reshape(-1)
        body = (
            pb_field(1, 19)
            + pb_field(2, shape)
            + pb_field(13, b"".join(pb_varint(int(v)) for v in bits))
        )
    elif values == "float_val":
        body = pb_field(1, 1) + pb_field(2, shape) + pb_field(5, np.unique(arr).astype("<f4").tobytes()
                                                             if np.unique(arr).size == 1 else
                                                             arr.astype("<f4").tobytes())  # fmt: skip
    else:
        raise ValueError(values)
    return body


def tf_node(name: str, op: str, inputs: tuple[str, ...] = (), **attrs: bytes) -> bytes:
    """A NodeDef; ``attrs`` maps names to encoded AttrValue payloads."""
    body = pb_field(1, name.encode()) + pb_field(2, op.encode())
    body += b"".join(pb_field(3, i.encode()) for i in inputs)
    for key, val in attrs.items():
        body += pb_field(5, pb_field(1, key.encode()) + pb_field(2, val))
    return pb_field(1, body)


def tf_ints(values: list[int]) -> bytes:
    """An AttrValue ``list { i: ... }`` (packed)."""
    return pb_field(1, pb_field(3, b"".join(pb_varint(v) for v in values)))


def write_tf_graphdef(model: nn.Module, path: Path, *, values: str = "content",
                      saved_model: bool = False) -> Path:  # fmt: skip
    """A frozen GraphDef of ``model``'s depthwise convs (NHWC): each filter a ``Const``
    ``[kh, kw, C, mult]`` behind an ``Identity``, read by a ``DepthwiseConv2dNative`` with
    its strides and dilations; a ``Conv2D`` stem (never depthwise). ``saved_model`` wraps the
    graph in a SavedModel whose filters are variables (``VarHandleOp`` + ``ReadVariableOp``)."""
    nodes = [tf_node("image", "Placeholder", dtype=pb_field(6, 1))]
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    sw = stem.weight.detach().numpy().transpose(2, 3, 1, 0)
    nodes.append(tf_node("stem/weights", "Const", value=pb_field(8, tf_tensor(sw))))
    nodes.append(
        tf_node("stem/Conv2D", "Conv2D", ("image", "stem/weights"), strides=tf_ints([1, 1, 1, 1]))
    )
    prev = "stem/Conv2D"
    for name, conv in depthwise_convs(model):
        scope = f"block{name}/depthwise"
        if saved_model:
            nodes.append(tf_node(f"{scope}_weights", "VarHandleOp", dtype=pb_field(6, 1)))
            nodes.append(
                tf_node(f"{scope}/ReadVariableOp", "ReadVariableOp", (f"{scope}_weights",))
            )
            filt = f"{scope}/ReadVariableOp"
        else:
            value = pb_field(8, tf_tensor(keras_kernel(conv), values=values))
            nodes.append(tf_node(f"{scope}_weights", "Const", value=value, dtype=pb_field(6, 1)))
            nodes.append(tf_node(f"{scope}_weights/read", "Identity", (f"{scope}_weights:0",)))
            filt = f"{scope}_weights/read"
        s, d = conv.stride[0], conv.dilation[0]
        nodes.append(tf_node(scope, "DepthwiseConv2dNative", (f"{prev}:0", filt, "^image"),
                             strides=tf_ints([1, s, s, 1]), dilations=tf_ints([1, d, d, 1]),
                             padding=pb_field(2, b"SAME")))  # fmt: skip
        prev = scope
    graph = b"".join(nodes) + pb_field(4, pb_field(1, 27))  # versions { producer: 27 }
    if saved_model:
        graph = pb_field(1, 1) + pb_field(2, pb_field(2, graph))  # schema 1, meta_graphs
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph)
    return path


def write_seeds(model: nn.Sequential, folder: Path) -> dict[str, Path]:
    """Every seed file of :data:`SEED_NAMES` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "checkpoint": write_checkpoint,
        "checkpoint_legacy": lambda m, p: write_checkpoint(m, p, legacy=True),
        "safetensors": write_safetensors,
        "numpy": write_npy,
        "npz": write_npz,
        "onnx": write_onnx,
        "tflite": write_tflite,
        "keras": write_h5,
        "keras3": write_keras3,
        "keras3_h5": write_keras3_h5,
        "keras3_real": write_keras3_real,
        "tfjs": lambda m, p: write_tfjs(m, p.parent, kind="graph", quant="uint8"),
        "tfjs_layers": lambda m, p: write_tfjs(
            m, p.parent, kind="layers", quant="float16", prefix="layers"
        ),
        "torchscript": write_torchscript,
        "pickled_model": write_pickled_model,
        "openvino": write_openvino,
        "ncnn": write_ncnn,
        "tf_graphdef": write_tf_graphdef,
    }
    return {k: writers[k](model, folder / name) for k, name in SEED_NAMES.items()}


# ----------------------------------------------------------------------------- mutations
def truncations(data: bytes, n_cuts: int = 40) -> list[tuple[str, bytes]]:
    """``n_cuts`` prefixes of ``data``, every ``len // n_cuts`` bytes (plus the first 16)."""
    step = max(1, len(data) // n_cuts)
    cuts = sorted({*range(1, min(16, len(data))), *range(step, len(data), step)})
    return [(f"cut{c}", data[:c]) for c in cuts]


def bitflips(data: bytes, n: int, seed: int, flips: int = 4) -> list[tuple[str, bytes]]:
    """``n`` copies of ``data`` with ``flips`` random bits flipped each (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), flips):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        out.append((f"flip{i}", bytes(buf)))
    return out
