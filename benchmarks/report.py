"""The Markdown report of a run: models, build times, latency and throughput
tables, first calls, ratios to keras.applications and timm, fractions of peak
and errors. It reads only the run's JSON, so `benchmark.py --render` can
rewrite the report of an earlier run.
"""

import math

from common import KERAS_BACKENDS, MODELS
from timing import SKIPPED

# Columns of the report, in order: (implementation, backend) -> header.
IMPL_LABELS = {"ours": "ours", "keras_apps": "keras.apps", "timm_eager": "timm eager",
               "timm_compiled": "timm compiled"}


def collect(run):
    """{(model, impl, backend): record} over every worker."""
    table = {}
    for data in run["workers"].values():
        for rec in data.get("records", []):
            table[(rec["model"], rec["impl"], rec["backend"])] = rec
    return table


def columns(run):
    """The (impl, backend) columns present, ours first, then keras.apps, then timm."""
    cols = []
    keras_backends = [b for b in run["workers"] if b in KERAS_BACKENDS]
    impls = ("ours",) if run["settings"].get("no_keras_apps") else ("ours", "keras_apps")
    for impl in impls:
        cols += [(impl, b) for b in keras_backends]
    if "timm" in run["workers"]:
        cols += [("timm_eager", "timm"), ("timm_compiled", "timm")]
    return cols


def column_label(col):
    impl, backend = col
    return IMPL_LABELS[impl] if backend == "timm" else f"{IMPL_LABELS[impl]} {backend}"


def model_macs(table, key):
    """(MACs, source) of our model: count_macs, else a flop counter on ours, else timm's."""
    for backend in KERAS_BACKENDS:
        rec = table.get((key, "ours", backend), {})
        if rec.get("macs_source") == "count_macs":
            return rec["macs"], "count_macs (ours)"
    rec = table.get((key, "ours", "torch"), {})
    if rec.get("macs"):
        return rec["macs"], "flop counter on ours (torch backend)"
    rec = table.get((key, "timm_eager", "timm"), {})
    if rec.get("macs"):
        return rec["macs"], f"flop counter on timm {rec['timm_name']}"
    return None, None


def record_macs(table, key, impl, backend):
    rec = table.get((key, impl, backend), {})
    if rec.get("macs"):
        return rec["macs"]
    if impl == "keras_apps":
        for b in KERAS_BACKENDS:
            if table.get((key, impl, b), {}).get("macs"):
                return table[(key, impl, b)]["macs"]
    return model_macs(table, key)[0]


def fmt(value, spec=".1f", missing="—"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def metric(rec, kind, batch=None):
    """Median ms of an inference batch or the training step, or None."""
    if not rec:
        return None
    if kind == "build":
        return rec.get("build_s")
    stats = rec.get("infer", {}).get(str(batch)) if kind == "infer" else rec.get("train")
    return (stats or {}).get("median_ms")


def cell(rec, kind, batch=None, show_path=False):
    if rec is None:
        return "—"
    stats = rec.get("infer", {}).get(str(batch)) if kind == "infer" else rec.get("train")
    if not stats or "median_ms" not in stats:
        if not stats and "error" not in rec:
            return "—"
        tried = rec.get("infer_all", {}).get(str(batch)) if kind == "infer" else rec.get(
            "train_all")
        errors = " ".join(str(s.get("error", "")) for s in (tried or []) + [stats or {}, rec])
        if "RESOURCE_EXHAUSTED" in errors or "out of memory" in errors.lower():
            return "out of memory"
        if SKIPPED in errors:
            return "not run (time limit)"
        return "killed" if "SIGKILL" in errors else "error"
    text = fmt(stats["median_ms"])
    if show_path and stats.get("path"):
        text += f" ({stats['path']})"
    return text


def ratio(ours, ref):
    if not ours or not ref:
        return "—"
    r = ours / ref
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def md_table(header, rows, align=None):
    align = align or ["l"] + ["r"] * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(run, args, final=True):
    table = collect(run)
    cols = columns(run)
    models = args.models.split(",")
    workers = run["workers"]
    machine = run["machine"]
    out = []
    device = "GPU" if args.device == "gpu" else "CPU"
    out.append(f"# MobileNet benchmark ({device})\n")
    out.append(f"Run {run['started']}, {run['wall_s'] / 60:.1f} min in all. Command: "
               f"`python benchmarks/benchmark.py {' '.join(args.argv)}`\n")
    if not final:
        todo = [b for b in run.get("jobs", args.backends.split(",")) if b not in run["workers"]]
        out.append(f"**Partial report, written before the workers {', '.join(todo)} ran: "
                   "the run is still going on, or was interrupted.**\n")
    out.append(f"- Machine: {machine.get('cpu', '?')}, {machine['cpu_count']} cores "
               f"({machine['cores_used']} used), "
               f"{machine['platform']}, Python {machine['python']}; load average (1, 5, 15 min) "
               f"at the start {machine.get('load_average', '?')}, at the end "
               f"{run.get('load_average_end', '?')}.")
    load = max((machine.get("load_average") or [0])[:1] + (run.get("load_average_end") or [0])[:1])
    if args.device == "cpu" and load > 0.5 * (machine["cpu_count"] or 1):
        out.append("- **The machine was busy (load average above half its cores): other "
                   "processes competed for the cores and the timings are noisy; rerun on an "
                   "idle machine.**")
    for backend, data in workers.items():
        versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
        line = f"- Worker `{backend}`: {data.get('device_name', '?')}; {versions}; " \
               f"{data.get('wall_s', 0):.0f} s"
        if data.get("paths"):
            line += f"; inference/training paths tried: {', '.join(data['paths'])}"
        if data.get("error"):
            line += f"; **{data['error']}**"
        out.append(line + ".")
    if run["peaks"]:
        peaks = "; ".join(f"{k}: {v / 1e9:,.0f} GFLOP/s" for k, v in run["peaks"].items())
        out.append(f"- Peak matmul (best of {10} runs each): {peaks}. Fractions below use "
                   f"**{run['peak_ref']}**.")
    elif run["peak_error"]:
        out.append(f"- Peak matmul: {run['peak_error']}.")
    precision = f"mixed precision ({args.mp_dtype})" if args.mixed_precision else "float32"
    out.append(
        f"- Batches {args.batches}, training step at batch {args.train_batch or 'none'}; "
        f"{precision}; input {args.size or 'default size per model (224; V4: its default_size)'}"
        f"; median of at least {args.repeats} timed calls ({args.train_repeats} for training)"
        + (f", more until they add up to {args.min_time:g} s," if args.min_time else "")
        + f" after {args.warmup} warm-up calls (the first, which compiles, is reported apart), "
        f"each measurement cut short after {args.budget:.0f} s once 2 calls are timed."
    )
    out.append(
        "- Keras inference: `model.predict_on_batch(x)` on inputs already converted with "
        "`keras.ops.convert_to_tensor` (so on the device); it returns NumPy, which syncs. "
        "It is Keras' own fastest jitted path: on TensorFlow it tries both XLA "
        "(`jit_compile=True`) and a plain `tf.function` graph (`jit_compile=False`) and keeps "
        "the faster (shown in brackets), on JAX it is `jax.jit`, on torch eager (add "
        "`--keras-torch-compile` to also try `torch.compile`). Training: `model.train_on_batch` "
        "after `compile(SGD(0.01), 'categorical_crossentropy', jit_compile=<same paths>)`."
    )
    if any(name.startswith("timm") for name in workers):
        out.append(
            "- timm: `torch.inference_mode()` forward in eval mode, and `torch.compile(model, "
            "dynamic=False)` (one compile per batch shape); training: train-mode forward + "
            "cross-entropy + backward + `SGD.step()`, eager and through the compiled module."
            + (" channels_last." if args.channels_last else "")
        )
    if args.parallel:
        out.append(
            "- `--parallel`: the workers ran at the same time, each on cores of its own, and "
            "took turns for their measurements (an exclusive file lock from the first, "
            "compiling call to the last timed call), so no other worker's GPU work ran beside "
            "timed calls while imports, building and counting MACs overlapped; models of input "
            "size ≥ "
            f"{args.exclusive_size} were measured in one turn from build to last step "
            "(memory). Build times overlap other workers' work.")
    if args.infer_first:
        out.append("- Every model's inference was measured before any training step"
                   + (f"; no measurement started after the {args.time_limit:.0f} s "
                      "`--time-limit` (cells \"not run (time limit)\")" if args.time_limit
                      else "") + ".")
    out.append("")

    # Models: params and MACs.
    out.append("## Models\n")
    rows = []
    sources = set()
    for key in models:
        spec = MODELS[key]
        size = args.size or spec["size"]
        macs, source = model_macs(table, key)
        if source:
            sources.add(source.split(" timm ")[0])

        def params(impl, backends, key=key):
            for b in backends:
                rec = table.get((key, impl, b), {})
                if rec.get("params"):
                    return f"{rec['params'] / 1e6:.3f}"
            return "—"

        kapp_macs = record_macs(table, key, "keras_apps", "torch") if spec["keras_app"] else None
        if kapp_macs == macs and not any(
            table.get((key, "keras_apps", b), {}).get("macs") for b in KERAS_BACKENDS
        ):
            kapp_macs = None
        timm_rec = table.get((key, "timm_eager", "timm"), {})
        rows.append([
            spec["label"], size,
            params("ours", KERAS_BACKENDS), params("keras_apps", KERAS_BACKENDS) if spec[
                "keras_app"] else "n/a",
            params("timm_eager", ("timm",)),
            fmt(macs / 1e6 if macs else None, ".0f"),
            fmt(kapp_macs / 1e6 if kapp_macs else None, ".0f") if spec["keras_app"] else "n/a",
            fmt(timm_rec["macs"] / 1e6 if timm_rec.get("macs") else None, ".0f"),
            source or "—",
        ])
    out.append(md_table(
        ["model", "input", "params ours (M)", "params keras.apps (M)", "params timm (M)",
         "MMACs ours", "MMACs keras.apps", "MMACs timm", "MACs of ours from"],
        rows, ["l", "r", "r", "r", "r", "r", "r", "r", "l"]))
    out.append(
        "\nMACs are multiply-accumulates of one image in convolutions, matmuls and attention "
        "(torch.utils.flop_counter FLOPs / 2, or `keras_mobilenets.count_macs` when it exists); "
        "BatchNorm, activations and pooling are not counted.\n"
    )

    def metric_table(title, kind, batch=None, unit="ms", show_path=False):
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for col in cols:
                rec = table.get((key,) + col)
                if kind == "build":
                    if rec and "build_s" in rec:
                        cold = rec.get("build_cold_s")
                        row.append(f"{rec['build_s']:.2f}" + (f" ({cold:.2f})" if cold else ""))
                    else:
                        row.append("error" if rec else "—")
                elif kind == "throughput":
                    t = metric(rec, "infer" if batch else "train", batch)
                    n = batch or args.train_batch
                    row.append(fmt(n / (t / 1e3), ",.0f") if t else cell(rec, "infer" if batch
                                                                          else "train", batch))
                else:
                    row.append(cell(rec, kind, batch, show_path and col[1] == "tensorflow"))
            rows.append(row)
        out.append(f"## {title}\n")
        out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
        out.append("")

    multi_path_tf = len(workers.get("tensorflow", {}).get("paths", [])) > 1
    if args.no_cold_build:
        metric_table("Build time (s): constructing the model with random weights, second "
                     "build in the worker", "build")
    else:
        metric_table("Build time (s): constructing the model with random weights, second build "
                     "(first build in a fresh process, which pays one-off costs, in brackets)",
                     "build")
    if args.device == "gpu":
        for batch in [b for b in args.batches if b > 1]:
            metric_table(f"Inference throughput, batch {batch} (images/s, from the median)",
                         "throughput", batch)
        if args.train_batch:
            metric_table(f"Training throughput, batch {args.train_batch} (images/s, from the "
                         "median step)", "throughput")
    for batch in args.batches:
        metric_table(f"Inference latency, batch {batch} (ms, median)", "infer", batch,
                     show_path=multi_path_tf)
    if args.train_batch:
        metric_table(f"Training step, batch {args.train_batch} (ms, median)", "train",
                     show_path=multi_path_tf)

    # First-call (compile) times.
    first_calls = [(f"First inference call, batch {b}", "infer", b) for b in args.batches[:1]]
    if args.device == "gpu" and args.train_batch:
        first_calls.append((f"First training step, batch {args.train_batch}", "train", None))
    for title, kind, batch in first_calls:
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for col in cols:
                rec = table.get((key,) + col) or {}
                stats = (rec.get("infer", {}).get(str(batch)) if kind == "infer"
                         else rec.get("train")) or {}
                row.append(fmt(stats.get("first_call_s"), ".2f"))
            rows.append(row)
        out.append(f"## {title} (s, includes tracing/compilation)\n")
        out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
        out.append("")

    # Ratios.
    kinds = [("infer", b, f"b{b}") for b in args.batches]
    if args.train_batch:
        kinds.append(("train", None, f"train b{args.train_batch}"))
    keras_backends = [b for b in workers if b in KERAS_BACKENDS]
    if keras_backends and any(c[0] == "keras_apps" for c in cols):
        header = ["model"] + [f"{b} {label}" for b in keras_backends for _, _, label in kinds]
        rows = []
        for key in models:
            if not MODELS[key]["keras_app"]:
                continue
            row = [MODELS[key]["label"]]
            for b in keras_backends:
                for kind, batch, _ in kinds:
                    ours = metric(table.get((key, "ours", b)), kind, batch)
                    ref = metric(table.get((key, "keras_apps", b)), kind, batch)
                    row.append(ratio(ours, ref))
            rows.append(row)
        out.append("## Ours / keras.applications, same backend (time ratio; < 1 means ours is "
                   "faster)\n")
        out.append(md_table(header, rows))
        out.append("")
    ab = {b: d for b, d in run.get("ab", {}).items() if d.get("rows")}
    if ab:
        labels = [f"inference b{b}" for b in args.batches]
        if args.train_batch:
            labels.append(f"train b{args.train_batch}")
        header = ["model"] + [f"{b} {label.replace('inference ', '')}" for b in ab
                              for label in labels]
        rows = []
        for key in models:
            if not MODELS[key]["keras_app"]:
                continue
            row = [MODELS[key]["label"]]
            for data in ab.values():
                by_kind = {r["measurement"]: r for r in data["rows"] if r["model"] == key}
                for label in labels:
                    r = by_kind.get(label)
                    row.append(f"{r['ratio']:.3f} ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})"
                               if r else "—")
            rows.append(row)
        out.append("## Ours / keras.applications, alternating in one process (`--ab`)\n")
        out.append(
            "`ab_keras_apps.py` per backend: both models built in one process, timed in "
            "alternating blocks (order flipped every round), so the machine's drift hits "
            "both; median of the per-round time ratios, quartiles in brackets. TensorFlow "
            "runs the graph path, JAX `jax.jit`, torch eager.\n")
        out.append(md_table(header, rows))
        out.append("")
    for b, data in run.get("ab", {}).items():
        if data.get("error"):
            out.append(f"- A/B {b}: {data['error']}")
    if keras_backends and "timm" in workers:
        header = ["model"]
        for _, _, label in kinds:
            header += [f"{label} best backend", f"{label} / eager", f"{label} / compiled"]
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for kind, batch, _ in kinds:
                times = {b: metric(table.get((key, "ours", b)), kind, batch)
                         for b in keras_backends}
                times = {b: t for b, t in times.items() if t}
                eager = metric(table.get((key, "timm_eager", "timm")), kind, batch)
                compiled = metric(table.get((key, "timm_compiled", "timm")), kind, batch)
                if times:
                    best = min(times, key=times.get)
                    row.append(f"{best} ({times[best]:.1f} ms)")
                    row.append(ratio(times[best], eager))
                    row.append(ratio(times[best], compiled))
                else:
                    row += ["—", "—", "—"]
            rows.append(row)
        out.append("## Ours on its fastest backend / timm (time ratio; < 1 means ours is "
                   "faster)\n")
        out.append(md_table(header, rows))
        out.append("")

    # Achieved fraction of peak.
    peak = run["peaks"].get(run["peak_ref"]) if run["peak_ref"] else None
    if peak:
        frac_kinds = [("infer", b, f"b{b}", 2) for b in args.batches]
        if args.train_batch:
            frac_kinds.append(("train", None, f"train b{args.train_batch}", 6))
        for kind, batch, label, factor in frac_kinds:
            rows = []
            for key in models:
                row = [MODELS[key]["label"]]
                for col in cols:
                    t = metric(table.get((key,) + col), kind, batch)
                    macs = record_macs(table, key, *col)
                    n = batch if kind == "infer" else args.train_batch
                    row.append(f"{100 * factor * macs * n / (t / 1e3) / peak:.1f}"
                               if t and macs else "—")
                rows.append(row)
            formula = "2·MACs·batch" if kind == "infer" else "6·MACs·batch (forward + backward)"
            out.append(f"## Achieved fraction of peak, {label} (%: {formula} / time / "
                       f"{peak / 1e9:,.0f} GFLOP/s)\n")
            out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
            out.append("")

    # Errors.
    errors = []
    for (key, impl, backend), rec in sorted(table.items()):
        if "error" in rec:
            errors.append(f"- {key} {impl} {backend}: {rec['error']}")
        for stats in [s for v in rec.get("infer_all", {}).values() for s in v] + rec.get(
                "train_all", []):
            if "error" in stats:
                errors.append(f"- {key} {impl} {backend} path {stats['path']}: {stats['error']}")
        if rec.get("macs_error"):
            errors.append(f"- {key} {impl} {backend} MACs: {rec['macs_error']}")
    if errors:
        out.append("## Errors\n")
        out += errors
        out.append("")
    return "\n".join(out)
