"""Latency against MACs, one panel per inference batch and one for training."""

from report import collect, column_label, columns, metric, record_macs


def plot(run, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = collect(run)
    cols = columns(run)
    settings = run["settings"]
    batches = settings["batches"]
    models = settings["models"].split(",")
    panels = [(b, f"inference, batch {b}") for b in batches]
    if settings.get("train_batch"):
        panels.append((None, f"training step, batch {settings['train_batch']}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    markers = {"ours": "o", "keras_apps": "s", "timm_eager": "^", "timm_compiled": "v"}
    colors = {"tensorflow": "tab:orange", "jax": "tab:blue", "torch": "tab:red",
              "timm": "tab:green"}
    for ax, (batch, title) in zip(axes[0], panels):
        for col in cols:
            xs, ys, names = [], [], []
            for key in models:
                rec = table.get((key,) + col)
                t = metric(rec, "infer" if batch else "train", batch)
                macs = record_macs(table, key, *col)
                if t and macs:
                    xs.append(macs / 1e6)
                    ys.append(t)
                    names.append(key)
            if not xs:
                continue
            color = colors[col[1]]
            if col[0] == "timm_compiled":
                color = "darkgreen"
            ax.scatter(xs, ys, marker=markers[col[0]], color=color, label=column_label(col),
                       alpha=0.8, facecolors="none" if col[0] == "keras_apps" else color)
            if col[0] == "ours":
                for x, y, name in zip(xs, ys, names):
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MMACs per image")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    device = "GPU" if settings["device"] == "gpu" else "CPU"
    fig.suptitle(f"MobileNet latency vs MACs ({device}, {run['machine'].get('cpu', '')})")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
