"""The Markdown report of `export_latency.py`: latency tables, op counts and
output differences, from the results `export_latency.measure` returns."""

WATCHED = {
    "tflite": ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PAD", "TRANSPOSE",
               "RESHAPE", "MEAN", "AVERAGE_POOL_2D", "HARD_SWISH", "MUL", "ADD", "QUANTIZE",
               "DEQUANTIZE"),
    "onnx": ("Conv", "FusedConv", "QLinearConv", "Gemm", "MatMul", "Pad", "Transpose",
             "Reshape", "GlobalAveragePool", "ReduceMean", "HardSwish", "HardSigmoid", "Mul",
             "Add"),
}


def ops_text(counts, kind):
    shown = [f"{name} {counts[name]}" for name in WATCHED[kind] if counts.get(name)]
    rest = sum(n for name, n in counts.items() if name not in WATCHED[kind])
    return f"{sum(counts.values())}: " + ", ".join(shown) + (f", other {rest}" if rest else "")


def fmt_ratio(r):
    return f"**{r[0]:.2f}** ({r[1]:.2f}-{r[2]:.2f})" if r else "-"


def onnx_table(results, needs, intro, header, cells):
    """Lines of a table of the ONNX results that have file `needs` (all of
    them for None): model, batch, then `cells(ms, ratios)` under `header`."""
    rows = [r for r in results if r["runtime"] == "onnx" and (needs is None or needs in r["ms"])]
    if not rows:  # an older run without that file
        return []
    lines = ["", intro, "", "| model | batch | " + " | ".join(header) + " |",
             "|---|---:|" + "---:|" * len(header)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {' | '.join(cells(r['ms'], r['ratios']))} |")
    return lines


def render(results, command):
    nan = float("nan")
    lines = ["# Exported-model latency", "", f"Command: `{command}`", "",
             "Median milliseconds per call; ratios are medians of per-round ratios "
             "(min-max across rounds), < 1 means ours is faster.", "",
             "## LiteRT (ai_edge_litert, XNNPACK, batch 1)", "",
             "timm: litert-torch's conversion (`--litert-torch-python`; int8 through its PT2E "
             "quantizer), given its NCHW input; timm same input: behind our input contract, as "
             "for ONNX below.", "",
             "| model | precision | threads | keras.apps ms | ours ms | ours / keras.apps | "
             "timm ms | ours / timm | ours / timm same input |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in results if r["runtime"] == "litert"):
        ms, ra = r["ms"], r["ratios"]
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['threads']} | "
            f"{ms.get('keras_tf', nan):.2f} | {ms['ours_tf']:.2f} | "
            f"{fmt_ratio(ra.get('ours_tf/keras_tf'))} | {ms.get('timm', nan):.2f} | "
            f"{fmt_ratio(ra.get('ours_tf/timm'))} | {fmt_ratio(ra.get('ours_tf/timm_same_input'))} |")
    lines += onnx_table(
        results, None, "## ONNX (onnxruntime, 1 thread)",
        ["keras.apps (TF) ms", "ours (TF) ms", "ours (TF) / keras.apps", "timm ms",
         "ours (torch) ms", "ours (torch) / timm", "ours (TF) / timm"],
        lambda ms, ra: [f"{ms.get('keras_tf', nan):.2f}", f"{ms.get('ours_tf', nan):.2f}",
                        fmt_ratio(ra.get("ours_tf/keras_tf")), f"{ms.get('timm', nan):.2f}",
                        f"{ms.get('ours_torch', nan):.2f}", fmt_ratio(ra.get("ours_torch/timm")),
                        fmt_ratio(ra.get("ours_tf/timm"))])
    lines += onnx_table(
        results, "ours_torch_keras",
        "Ours exported from torch with keras.applications' weights and padding (TensorFlow SAME), "
        "against keras.applications' ONNX (from TensorFlow):",
        ["keras.apps (TF) ms", "ours (torch) ms", "ours (torch) / keras.apps"],
        lambda ms, ra: [f"{ms.get('keras_tf', nan):.2f}", f"{ms['ours_torch_keras']:.2f}",
                        fmt_ratio(ra.get("ours_torch_keras/keras_tf"))])
    lines += onnx_table(
        results, "timm_same_input",
        "timm with our input contract (`same_input_model`: channels-last images, for V3 our "
        "Rescaling's multiply-add, both inside the graph as in ours; the table above gives "
        "timm its NCHW, normalised input prepared outside the timed call):",
        ["timm same input ms", "ours (torch) / timm same input", "ours (TF) / timm same input"],
        lambda ms, ra: [f"{ms['timm_same_input']:.2f}",
                        fmt_ratio(ra.get("ours_torch/timm_same_input")),
                        fmt_ratio(ra.get("ours_tf/timm_same_input"))])
    lines += onnx_table(
        results, "ours_torch_raw",
        "Ours built with `include_preprocessing=False` (V3: normalised images in, channels-last, "
        "as timm's export takes normalised NCHW ones prepared outside the timed call), exported "
        "from torch, against timm:",
        ["timm ms", "ours, no preprocessing ms", "ours, no preprocessing / timm"],
        lambda ms, ra: [f"{ms['timm']:.2f}", f"{ms['ours_torch_raw']:.2f}",
                        fmt_ratio(ra.get("ours_torch_raw/timm"))])
    lines += ["", "## Op counts", "",
              "`.tflite` operators (float32 and int8); ONNX nodes after onnxruntime's "
              "graph optimisation.", "", "| model | graph | ops |", "|---|---|---|"]
    for r in results:
        kind = "tflite" if r["runtime"] == "litert" else "onnx"
        for name, counts in r["ops"].items():
            graph = f"{name} {r['precision']} {'.tflite' if kind == 'tflite' else '.onnx'}"
            lines.append(f"| {r['model']} | {graph} | {ops_text(counts, kind)} |")
    lines += ["", "## Outputs against Keras (max abs difference, batch 1)", "",
              "| model | runtime | precision | files |", "|---|---|---|---|"]
    for r in results:
        if r["threads"] == 1 and r["batch"] == 1:
            text = ", ".join(f"{n} {d:.2g}" for n, d in r["max_abs_diff"].items())
            lines.append(f"| {r['model']} | {r['runtime']} | {r['precision']} | {text} |")
    return "\n".join(lines) + "\n"
