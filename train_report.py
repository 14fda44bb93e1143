"""The results of `keras-mobilenets train`: exports checked against Keras,
curves, confusion matrix, report and files written whole."""

import os
import time


def write_csv(path, rows, fields):
    import csv

    partial = path + ".partial"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def write_text(path, text):
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


# ---------------------------------------------------------------------- run dir


def export_model(model, fmt, path, representative):
    if fmt == "keras_int8":
        # A copy, so that later exports see the float model.
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        copy.quantize("int8")
        copy.save(path)
    elif fmt in ("litert", "litert_int8"):
        import tensorflow as tf

        # Through the frozen forward, also for models that wrap ours (a
        # backbone with a new head is a plain keras.Model).
        from keras_mobilenets.layers.litert_export import export_litert

        if fmt == "litert":
            settings = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
        else:  # int8 inside, but HARD_SWISH in float for XNNPACK; float32 input and output
            settings = {"optimizations": [tf.lite.Optimize.DEFAULT],
                        "representative_dataset": lambda: ([r[None]] for r in representative),
                        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                          tf.lite.OpsSet.TFLITE_BUILTINS]}}
        export_litert(model, path, verbose=False, **settings)
    else:
        model(representative[:1])  # jax2onnx needs a model that was called
        model.export(path, format="onnx", verbose=False)
    return path


def run_exported(fmt, path, images, batch_size=32):
    import numpy as np

    outputs = []
    if fmt == "keras_int8":
        import keras

        model = keras.saving.load_model(path, compile=False)
        return model.predict(images.astype("float32"), batch_size=batch_size, verbose=0)
    if fmt.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].astype("float32")
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(out["index"]))
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].astype("float32")
            outputs.append(session.run(None, {name: x})[0])
    return np.concatenate(outputs)


# --------------------------------------------------------------------- report


def plot_curves(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[key]) for r in rows], "o-", label="training")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_confusion(matrix, classes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(12, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        top = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report_text(settings, info, rows, classes, labels, predicted, exports):
    import numpy as np

    lines = [f"# {settings['model']} on {info['data_name']}", ""]
    lines.append(f"Finished {time.strftime('%Y-%m-%d %H:%M')} on the {info['backend']} backend; "
                 f"{info['seconds']:.0f} s in this process{' (resumed)' if info['resumed'] else ''}.")
    lines.append("")
    lines.append(f"Data: {info['data']} ({info['data_summary']}); {info['train_images']} "
                 f"training and {len(labels)} validation images at {settings['image_size']} px.")
    for what, paths in (("Non-image files skipped", info["skipped"]),
                        ("Unreadable images skipped", info["unreadable"])):
        if paths:
            shown = ", ".join(str(p) for p in paths[:10]) + (" ..." if len(paths) > 10 else "")
            lines.append(f"{what} ({len(paths)}): {shown}")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    accuracy = float(np.mean(predicted == labels))
    lines += ["", "| setting | value |", "|---|---|"]
    for key in ("model", "weights", "image_size", "batch_size", "epochs", "freeze_epochs", "lr",
                "augment", "mixed_precision", "seed"):
        value = settings[key]
        lines.append(f"| {key} | {'none (random initialisation)' if value is None else value} |")
    lines += ["", f"Best epoch: {int(best['epoch']) + 1} of {len(rows)}, validation accuracy "
              f"{accuracy:.4f} (`best.keras`; `log.csv` has every epoch).", "",
              "## Per-class validation accuracy", "",
              "| class | images | correct | accuracy |", "|---|---:|---:|---:|"]
    for k, name in enumerate(classes):
        mask = labels == k
        correct = int(np.sum(predicted[mask] == k))
        lines.append(f"| {name} | {int(mask.sum())} | {correct} | "
                     f"{correct / max(1, int(mask.sum())):.4f} |")
    if info["plots"]:
        lines += ["", "## Curves", "", "![loss and accuracy per epoch](curves.png)", "",
                  "## Confusion matrix", "", "![validation confusion matrix](confusion.png)"]
    else:
        lines += ["", "(No curves.png / confusion.png: matplotlib is not installed.)"]
    if exports:
        lines += ["", "## Exported models", "",
                  "Run in their own runtime on the validation images (float32 [0, 255] RGB in, "
                  "probabilities out; keras_int8 stores int8 weights, litert_int8 also computes in int8):", "",
                  "| format | file | MB | accuracy | top-1 agreement with Keras |",
                  "|---|---|---:|---:|---:|"]
        for e in exports:
            lines.append(f"| {e['format']} | {e['file']} | {e['bytes'] / 1e6:.2f} | "
                         f"{e['accuracy']:.4f} | {e['agreement']:.4f} |")
    lines += ["", "Predict: `keras-mobilenets predict best.keras IMAGE...`", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
