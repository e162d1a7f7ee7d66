"""Each drawing is checked against the model it was drawn from.

The expectations are read from the model independently of the diagram code: through
``model.get_config()["layers"][i]["inbound_nodes"]`` (the serialised graph) rather than the
live nodes the diagrams walk.
"""

from __future__ import annotations

import math
import shutil
import xml.etree.ElementTree as ET

import keras
import pytest

from triptych.cli.main import main
from triptych.diagrams import diagrams_for, draw, draw_dense_block, draw_resnet, draw_separable_conv
from triptych.diagrams import draw_xception_flows, render
from triptych.diagrams.graph import shape_text
from triptych.errors import TriptychError
from triptych.models import build
from triptych.models.profile import layer_macs


def config_inputs(model) -> dict[str, list[str]]:
    """layer name -> names of the layers feeding it, from the serialised config."""
    inputs = {}
    for layer in model.get_config()["layers"]:
        names = []
        for node in layer["inbound_nodes"]:
            for arg in node["args"]:
                for tensor in arg if isinstance(arg, (list, tuple)) else [arg]:
                    if isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__":
                        names.append(tensor["config"]["keras_history"][0])
        inputs[layer["name"]] = names
    return inputs


@pytest.fixture(scope="module")
def resnet50():
    return build("resnet50", 10, (224, 224, 3))


@pytest.fixture(scope="module")
def xception():
    return build("xception", 3, (299, 299, 3))


@pytest.fixture(scope="module")
def densenet():
    return build("densenet121", 3, (224, 224, 3))


@pytest.fixture(scope="module")
def resnet18_cifar():
    return build("resnet18", 10, (32, 32, 3), stem="cifar")


# ----------------------------------------------------------------------------- ResNet


def test_resnet50_draws_a_projection_then_an_identity_bottleneck(resnet50):
    diagram = draw_resnet(resnet50)
    inputs = config_inputs(resnet50)
    assert diagram.facts["block_kind"] == "bottleneck"
    assert diagram.facts["shortcuts"] == {"stage2_block1": "projection", "stage2_block2": "identity"}
    # The graph agrees: block1 adds a projected shortcut, block2 adds its own input.
    assert "stage2_block1_shortcut_bn" in inputs["stage2_block1_add"]
    assert "stage2_block1_out" in inputs["stage2_block2_add"]
    # One shortcut arrives at each drawn add; the projection path has two edges (in -> conv -> add).
    shortcut_edges = [e for e in diagram.edges if e.kind == "shortcut"]
    into_adds = [e for e in shortcut_edges if e.dst.endswith("__add")]
    assert len(into_adds) == len(diagram.facts["adds"]) == 2
    assert len(shortcut_edges) == 2 + 1
    identity = [e for e in into_adds if e.dst == "stage2_block2__add"]
    assert identity[0].src == "stage2_block1__add"  # straight from the previous block's output
    # Whole-model counts: one Add per block, one projection conv per projection block.
    adds = [n for n in inputs if n.endswith("_add")]
    projections = [n for n in inputs if n.endswith("_shortcut_conv")]
    assert diagram.facts["num_blocks"] == len(adds) == 16
    assert diagram.facts["num_projection"] == len(projections) == 4


def test_resnet_edge_shapes_are_the_layer_output_shapes(resnet50):
    diagram = draw_resnet(resnet50)
    names = {layer.name for layer in resnet50.layers}
    checked = 0
    for edge in diagram.edges:
        if edge.src in names and edge.kind == "main":
            assert edge.label == shape_text(resnet50.get_layer(edge.src).output.shape)
            checked += 1
    assert checked >= 6
    assert "56×56×256" in diagram.source and "28×28×512" in diagram.source


def test_resnet18_gets_basic_blocks_at_any_input_size(resnet18_cifar):
    diagram = draw_resnet(resnet18_cifar)
    assert diagram.facts["block_kind"] == "basic"
    assert diagram.facts["num_blocks"] == 8 and diagram.facts["num_projection"] == 3
    main_into_add = [e for e in diagram.edges if e.kind == "main" and e.dst == "stage2_block2__add"]
    assert main_into_add[0].label == "16×16×128"  # 32x32 input, stride-1 stem, stage 2 halves it
    with pytest.raises(TriptychError, match="no stage 7"):
        draw_resnet(resnet18_cifar, stage=7)


# ----------------------------------------------------------------------------- Xception


def test_xception_flows_cover_every_block_and_find_the_middle_flow(xception):
    diagram = draw_xception_flows(xception)
    base = xception.get_layer("base")
    inputs = config_inputs(base)
    blocks = {n.split("_")[0] for n in inputs if n.startswith("block")}
    flows = diagram.facts["flows"]
    assert set(flows["entry"] + flows["middle"] + flows["exit"]) == blocks
    assert flows["entry"] == ["block1", "block2", "block3", "block4"]
    assert flows["exit"] == ["block13", "block14"]
    # The middle flow: blocks whose Add takes the previous Add straight in (identity shortcut).
    adds = [n for n, srcs in inputs.items() if any(s in inputs and s.startswith("add") for s in srcs)
            and n.startswith("add")]
    assert diagram.facts["middle_repeats"] == len(adds) == 8
    assert "×8" in diagram.source  # the middle flow is drawn once, with its count
    # Shapes on the edges are those the next block receives.
    label_into = {e.dst: e.label for e in diagram.edges}
    assert label_into["block5"] == shape_text(base.get_layer("block5_sepconv1_act").input.shape) == "19×19×728"
    assert label_into["block14"] == shape_text(base.get_layer("block14_sepconv1").input.shape)
    assert label_into["__features"] == shape_text(base.output.shape) == "10×10×2048"


def test_separable_conv_counts_are_the_real_layers(xception):
    diagram = draw_separable_conv(xception)
    facts = diagram.facts
    layer = xception.get_layer("base").get_layer(facts["layer"])
    assert isinstance(layer, keras.layers.SeparableConv2D)
    assert facts["params"] == layer.count_params()
    assert facts["depthwise_params"] == math.prod(layer.depthwise_kernel.shape)
    assert facts["pointwise_params"] == math.prod(layer.pointwise_kernel.shape)
    c_in, c_out = layer.input.shape[-1], layer.output.shape[-1]
    h, w = layer.output.shape[1:3]
    assert facts["conv_params"] == 3 * 3 * c_in * c_out
    assert facts["macs"] == layer_macs(layer, tuple(layer.input.shape), tuple(layer.output.shape))
    assert facts["conv_macs"] == h * w * 9 * c_in * c_out
    assert facts["conv_params"] / facts["params"] > 8
    assert f"{layer.count_params():,}" in diagram.source


def test_separable_counts_with_bias_stride_and_depth_multiplier():
    inputs = keras.Input((17, 17, 6))
    outputs = keras.layers.SeparableConv2D(10, 3, strides=2, depth_multiplier=2, use_bias=True, name="sep")(inputs)
    model = keras.Model(inputs, outputs)
    facts = draw_separable_conv(model, "sep").facts
    assert facts["params"] == model.get_layer("sep").count_params() == 3 * 3 * 6 * 2 + 6 * 2 * 10 + 10
    assert facts["output_shape"][1:] == (8, 8, 10)  # 17x17, 3x3 valid, stride 2
    assert facts["macs"] == 8 * 8 * (9 * 12 + 12 * 10)


def test_separable_conv_rejects_another_layer(xception):
    with pytest.raises(TriptychError, match="not a SeparableConv2D"):
        draw_separable_conv(xception, "block1_conv1")


# ----------------------------------------------------------------------------- DenseNet


def concat_leaves(inputs: dict[str, list[str]], name: str) -> int:
    """How many feature maps a chain of concatenations joins."""
    return sum(concat_leaves(inputs, s) if s.endswith("_concat") else 1 for s in inputs[name])


@pytest.mark.parametrize("block", [2, 3])
def test_dense_connections_drawn_equal_the_concatenation_inputs(densenet, block):
    diagram = draw_dense_block(densenet, block)
    base = densenet.get_layer("base")
    inputs = config_inputs(base)
    concats = sorted((n for n in inputs if n.startswith(f"conv{block}_") and n.endswith("_concat")),
                     key=lambda n: int(n.split("_")[1][5:]))
    n = len(concats)
    # Layer i reads the concatenation made by layer i-1 (the block input for layer 1).
    expected = 1 + sum(concat_leaves(inputs, c) for c in concats[:-1])
    assert diagram.count("dense") == expected == n * (n + 1) // 2
    assert diagram.count("transition") == concat_leaves(inputs, concats[-1]) == n + 1
    k = base.get_layer(f"conv{block}_block1_2_conv").filters
    assert diagram.facts["growth_rate"] == k == 32
    assert diagram.facts["output_channels"] == diagram.facts["input_channels"] + n * k
    assert base.get_layer(concats[-1]).output.shape[-1] == diagram.facts["output_channels"]
    # Every edge leaving a layer carries k channels; those from the block input carry c0.
    for edge in diagram.edges:
        if edge.kind in ("dense", "transition"):
            assert edge.label == str(diagram.facts["input_channels"] if edge.src == "x0" else k)


def test_dense_block_is_followed_by_its_transition(densenet):
    diagram = draw_dense_block(densenet)
    transition = diagram.facts["transition"]
    assert diagram.facts["block"] == 2
    assert transition["is_transition"] and transition["layers"] == ["pool2_bn", "pool2_relu", "pool2_conv", "pool2_pool"]
    base = densenet.get_layer("base")
    assert transition["output_shape"] == base.get_layer("pool2_pool").output.shape
    assert "28×28×128" in diagram.source and "21 connections" in diagram.source
    with pytest.raises(TriptychError, match="dense blocks: 2, 3, 4, 5"):
        draw_dense_block(densenet, 9)


# ----------------------------------------------------------------------------- files and CLI


def test_draw_writes_svg_and_png(tmp_path):
    written = draw("resnet18", tmp_path / "figs" / "r18.svg", input_shape=(32, 32, 3), stem="cifar")
    assert [p.name for p in written] == ["r18.svg", "r18.png"]
    assert written[0].read_text().lstrip().startswith(("<?xml", "<svg"))
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stage2_block1" in written[0].read_text()


def test_xception_renders_both_drawings(xception, tmp_path):
    paths = []
    for suffix, diagram in diagrams_for(xception, "xception").items():
        paths += diagram.render(tmp_path / f"x{suffix}.svg")
    assert sorted(p.name for p in paths) == ["x.png", "x.svg", "x_separable.png", "x_separable.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.fixture
def without_system_dot(monkeypatch):
    """A machine without Graphviz: its 'dot' is not found, whatever this one has."""
    monkeypatch.setattr(render, "system_dot", lambda: None)


def bundled_wrote(svg_text: str) -> bool:
    return "(graphviz-pure)" in svg_text  # its SVG header: "Generated by graphviz version ... (graphviz-pure)"


def test_without_graphviz_the_bundled_program_draws_a_valid_svg_and_png(tmp_path, without_system_dot):
    svg, png = draw("resnet18", tmp_path / "r18.svg", input_shape=(32, 32, 3), stem="cifar")
    text = svg.read_text()
    assert bundled_wrote(text)
    root = ET.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "stage2_block1" in text and "16×16×128" in text
    assert 'font-family="Helvetica,sans-Serif"' in text and "DejaVu" not in text  # a font it carries
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 500 and height > 500 and len(data) > 20_000  # a drawing at PNG_DPI, not an empty page


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_dot_draws_when_installed(resnet18_cifar, tmp_path):
    svg, png = draw_resnet(resnet18_cifar).render(tmp_path / "r18.svg")
    text = svg.read_text()
    assert not bundled_wrote(text) and "Generated by graphviz version" in text
    assert 'font-family="DejaVu Sans"' in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_neither_renderer_is_one_clear_error(resnet18_cifar, tmp_path, without_system_dot, monkeypatch):
    monkeypatch.setattr(render, "bundled_dot", lambda: None)
    with pytest.raises(TriptychError, match="neither Graphviz's 'dot' nor the graphviz-pure program"):
        draw_resnet(resnet18_cifar).render(tmp_path / "r18.svg")
    assert not list(tmp_path.iterdir())


def test_unknown_model_is_one_line_listing_valid_ones(tmp_path):
    with pytest.raises(TriptychError, match=r"unknown model 'resnet5'; valid models: .*resnet50.*xception"):
        draw("resnet5", tmp_path / "x.svg")


def test_cli_diagram(tmp_path, capsys):
    out = tmp_path / "r18.svg"
    assert main(["diagram", "resnet18", "--out", str(out), "--input-size", "32", "--option", "stem=cifar"]) == 0
    assert out.exists() and out.with_suffix(".png").exists()
    assert str(out) in capsys.readouterr().out
    assert main(["diagram", "alexnet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid models: densenet121" in err


def test_cli_diagram_without_graphviz(tmp_path, capsys, without_system_dot):
    out = tmp_path / "r18.svg"
    assert main(["diagram", "resnet18", "--out", str(out), "--input-size", "32", "--option", "stem=cifar"]) == 0
    assert bundled_wrote(out.read_text()) and out.with_suffix(".png").stat().st_size > 20_000
    assert capsys.readouterr().out.split() == [str(out), str(out.with_suffix(".png"))]
