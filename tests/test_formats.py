"""The format registry: one entry per reader, duplicate names refused, listing and errors
generated from it, and the per-source memory budget."""

from __future__ import annotations

import pytest

from kernelatlas.cli import main
from kernelatlas.errors import FormatError, KernelAtlasError, TensorTooLargeError
from kernelatlas.harvest.formats import (
    ReadResult,
    detect_format,
    get_format,
    list_formats,
    register_format,
    supported_text,
)
from kernelatlas.limits import charge, source_budget
from tests.conftest import build_tiny_dscnn
from tests.hostile.makers import write_seeds

# seed file -> the format that must claim it
_SEED_FORMAT = {
    "checkpoint": "checkpoint", "checkpoint_legacy": "checkpoint", "safetensors": "safetensors",
    "numpy": "numpy", "npz": "numpy", "onnx": "onnx", "tflite": "tflite", "keras": "keras",
    "keras3": "keras", "keras3_h5": "keras", "keras3_real": "keras", "tfjs": "tfjs",
    "tfjs_layers": "tfjs",
    "torchscript": "torchscript", "pickled_model": "checkpoint", "openvino": "openvino",
    "ncnn": "ncnn", "tf_graphdef": "tf_graphdef",
}  # fmt: skip


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return write_seeds(build_tiny_dscnn(), tmp_path_factory.mktemp("seeds"))


def test_every_seed_file_is_detected_and_read_by_its_format(seeds):
    assert {s.name for s in list_formats()} >= set(_SEED_FORMAT.values())
    for key, path in seeds.items():
        fmt = detect_format(path)
        assert fmt == _SEED_FORMAT[key], key
        res = get_format(fmt).read(path)
        assert isinstance(res, ReadResult) and res.layers, key


def test_detection_is_by_content_not_name(seeds, tmp_path):
    renamed = tmp_path / "weights.bin"  # an ONNX-free extension for a TFLite file
    renamed.write_bytes(seeds["tflite"].read_bytes())
    assert detect_format(renamed) == "tflite"


def test_duplicate_registration_is_refused():
    with pytest.raises(KernelAtlasError, match="already registered"):
        register_format("onnx", extensions=(".onnx",), sniff=lambda h, e: False)(lambda p: None)


def test_unknown_format_message_lists_every_registered_extension(tmp_path):
    f = tmp_path / "model.xyz"
    f.write_bytes(b"not a model at all")
    with pytest.raises(FormatError) as err:
        detect_format(f)
    msg = str(err.value)
    assert "\n" not in msg and supported_text() in msg
    for spec in list_formats():
        assert all(ext in msg for ext in spec.extensions)


def test_fold_bn_refused_by_formats_without_architecture(seeds):
    from kernelatlas.harvest import harvest

    assert not get_format("safetensors").can_fold_bn
    with pytest.raises(KernelAtlasError, match="fold-bn"):
        harvest(str(seeds["safetensors"]), fold_bn=True)


def test_formats_command_lists_the_registry(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    for spec in list_formats():
        assert spec.name in out and spec.extensions[0] in out


def test_source_budget_bounds_the_total(monkeypatch):
    monkeypatch.setenv("KERNELATLAS_MAX_SOURCE_BYTES", "1M")
    charge("outside any source", 10**12)  # no active budget: no limit
    with source_budget("m.pt"):
        charge("a", 600 * 1024)
        with pytest.raises(TensorTooLargeError, match="KERNELATLAS_MAX_SOURCE_BYTES"):
            charge("b", 600 * 1024)
