"""Pictures: Graphviz renderings of a graph's DOT text, and training curves (matplotlib)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class MissingTool(RuntimeError):
    """An optional program or package is not installed; the message says how to get it."""


def render_dot(dot: str, path: str | Path, fmt: str | None = None, timeout: float = 60) -> Path:
    """Render DOT text with Graphviz ``dot`` to ``path`` (format from its suffix: svg, png,
    pdf). Raises ``MissingTool`` when ``dot`` is not installed."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".") or "svg"
    exe = shutil.which("dot")
    if exe is None:
        raise MissingTool("Graphviz 'dot' is not installed (apt-get install graphviz, brew "
                          "install graphviz or conda install graphviz); write the DOT text "
                          "with --emit dot instead")
    r = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot.encode(),
                       capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingTool("plots need matplotlib: pip install 'irgraph[plot]' (or pip install "
                          "matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path: str | Path, title: str = "") -> Path:
    """Loss (and every other per-epoch metric but time and speed) against the epoch, as a PNG."""
    plt = _pyplot()
    epochs = [e["epoch"] for e in history.epochs]
    metrics = [k for k in history.epochs[0] if k not in ("epoch", "time", "examples_per_s")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        ax.plot(epochs, history[key], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key == "loss":
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
