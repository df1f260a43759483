"""Parameter and MAC counts as the paper counts them.

Only conv and dense weights count: no biases, no BatchNormalization, no adds
or pools. MACs are multiply-accumulates (the paper's tables call them FLOPs).
Counting a narrowed `Architecture` counts the removed input channels of every
following layer too, since they are gone from its kernel.
"""

import math
from typing import Dict, List, Optional, Tuple


def _out_size(size: int, kernel: int, strides: int, pad: Optional[int]) -> int:
    if pad is None:  # "same"
        return math.ceil(size / strides)
    return (size + 2 * pad - kernel) // strides + 1


def shapes(architecture) -> Dict[str, Tuple[int, int, int]]:
    """Node name -> (height, width, channels) of its output for one image."""
    result = {}
    for node in architecture.nodes:
        if node.op == "input":
            result[node.name] = tuple(architecture.input_shape)
            continue
        h, w, c = result[node.inputs[0]]
        if node.op in ("conv", "depthwise", "maxpool"):
            h = _out_size(h, node.kernel, node.strides, node.pad)
            w = _out_size(w, node.kernel, node.strides, node.pad)
        if node.op == "conv":
            c = architecture.filters(node)
        elif node.op == "gap":
            h = w = 1
        elif node.op == "flatten":
            h, w, c = 1, 1, h * w * c
        elif node.op == "dense":
            c = node.filters
        result[node.name] = (h, w, c)
    return result


def profile(architecture) -> dict:
    """Counts the params and MACs of every conv and dense layer.

    Args:
        architecture: An `hsd_tf.architectures.Architecture`.

    Returns:
        `{"params": N, "macs": N, "layers": [{"name", "output_size", "filters",
        "params", "macs"}, ...]}` with `output_size` as [height, width, channels].
    """
    sizes = shapes(architecture)
    layers: List[dict] = []
    for node in architecture.nodes:
        if node.op not in ("conv", "depthwise", "dense"):
            continue
        h, w, c = sizes[node.name]
        fan_in = sizes[node.inputs[0]][2]
        if node.op == "conv":
            params = node.kernel * node.kernel * fan_in * c
        elif node.op == "depthwise":
            params = node.kernel * node.kernel * c
        else:
            params = fan_in * c
        layers.append({
            "name": node.name,
            "output_size": [h, w, c],
            "filters": c,
            "params": params,
            "macs": params * h * w,
        })
    return {
        "params": sum(layer["params"] for layer in layers),
        "macs": sum(layer["macs"] for layer in layers),
        "layers": layers,
    }


def format_count(value: int) -> str:
    """1234567 -> "1.23M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def format_table(report: dict) -> str:
    """Renders a `profile` report as a fixed-width per-layer table with totals."""
    header = f"{'layer':<22} {'output size':>16} {'filters':>8} {'params':>12} {'MACs':>14}"
    lines = [header, "-" * len(header)]
    for layer in report["layers"]:
        size = "x".join(str(d) for d in layer["output_size"])
        lines.append(
            f"{layer['name']:<22} {size:>16} {layer['filters']:>8} {layer['params']:>12,} {layer['macs']:>14,}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<22} {'':>16} {'':>8} {report['params']:>12,} {report['macs']:>14,}"
    )
    lines.append(f"params {format_count(report['params'])}, MACs {format_count(report['macs'])}")
    return "\n".join(lines)
