"""PNG plots of closed-loop episodes (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def joint_trajectories(
    path: Path, t: np.ndarray, q_cmd: np.ndarray, q_meas: np.ndarray, joint_names: Sequence[str],
    q_min: np.ndarray, q_max: np.ndarray, margin: float, title: str,
) -> Path:  # fmt: skip
    """Commanded and measured position of every joint, with its position limits and the filter's
    margin band."""
    plt = _pyplot()
    n = len(joint_names)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 * n + 0.8), sharex=True)
    ok = np.isfinite(q_cmd[:, 0])
    for j, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(t[ok], q_cmd[ok, j], lw=1.2, label="commanded")
        ax.plot(t[ok], q_meas[ok, j], lw=1.0, ls="--", label="measured")
        for lim in (q_min[j], q_max[j]):
            ax.axhline(lim, color="red", lw=1.0)
        ax.axhspan(q_min[j], q_min[j] + margin, color="red", alpha=0.12, lw=0)
        ax.axhspan(q_max[j] - margin, q_max[j], color="red", alpha=0.12, lw=0)
        lo = min(np.nanmin(q_cmd[ok, j]), np.nanmin(q_meas[ok, j])) if ok.any() else q_min[j]
        hi = max(np.nanmax(q_cmd[ok, j]), np.nanmax(q_meas[ok, j])) if ok.any() else q_max[j]
        pad = 0.15 * max(hi - lo, 0.2)
        # Show the nearer limit when the motion comes within half a radian of it.
        ax.set_ylim(
            q_min[j] - 0.05 if lo - q_min[j] < 0.5 else lo - pad,
            q_max[j] + 0.05 if q_max[j] - hi < 0.5 else hi + pad,
        )
        ax.set_ylabel(f"{joint_names[j]}\n[rad]", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[0].set_title(f"{title}\n(red: position limits; shaded: safety margin)", fontsize=9)
    axes[-1].set_xlabel("sim time [s]")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def latency_histogram(path: Path, compute_ms: np.ndarray, delay_ms: np.ndarray, describe: str) -> Path:
    """Model compute time per call, and observation-to-arrival delay per chunk (what the scheduler sees)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, label in (
        (axes[0], compute_ms, "model compute per call [ms]"),
        (axes[1], delay_ms, "observation -> chunk arrival [ms]"),
    ):
        v = values[np.isfinite(values)]
        if v.size:
            ax.hist(v, bins=min(60, max(10, v.size // 4)), color="tab:blue", alpha=0.8)
            for q, ls in ((50, "-"), (99, "--")):
                x = float(np.percentile(v, q))
                ax.axvline(x, color="k", ls=ls, lw=1, label=f"p{q} {x:.2f} ms")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("count")
    fig.suptitle(f"inference latency ({describe})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def chunk_seams(
    path: Path, t: np.ndarray, q_cmd: np.ndarray, version: np.ndarray, dt: float,
    seam_jumps: np.ndarray, seam_jerks: np.ndarray, title: str,
) -> Path:  # fmt: skip
    """Commanded velocity of every joint with the chunk switches marked, and the per-seam jump and
    jerk over all episodes."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5))
    ok = np.isfinite(q_cmd[:, 0])
    tt, q = t[ok], q_cmd[ok]
    vel = np.diff(q, axis=0) / dt
    for j in range(vel.shape[1]):
        axes[0].plot(tt[1:], vel[:, j], lw=0.9)
    switches = np.flatnonzero(np.diff(version[ok]) != 0) + 1
    for i in switches:
        axes[0].axvline(tt[i], color="grey", lw=0.6, alpha=0.6)
    axes[0].set_ylabel("commanded velocity\n[rad/s]")
    axes[0].set_xlabel("sim time [s] (grey: chunk switches)")
    axes[0].set_title(title, fontsize=9)
    axes[1].plot(np.arange(seam_jumps.size), seam_jumps * 1e3, ".", ms=4)
    axes[1].set_ylabel("seam jump\n|2nd diff| [mrad]")
    axes[2].plot(np.arange(seam_jerks.size), seam_jerks, ".", ms=4, color="tab:orange")
    axes[2].set_ylabel("seam jerk [rad/s^3]")
    axes[2].set_xlabel("seam # (all episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def latent_prediction(
    path: Path, t: np.ndarray, k: np.ndarray, err: np.ndarray, base: np.ndarray, offsets_s: Sequence[float],
    title: str,
) -> Path:  # fmt: skip
    """Distance between the latent the model predicted for a future step and the latent it computed
    when that step came, against the "nothing changes" baseline (current latent)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(offsets_s))))
    for i, off in enumerate(offsets_s):
        m = k == i
        if m.any():
            axes[0].plot(t[m], err[m], ".", ms=4, color=colors[i], label=f"predicted, +{off:.2f} s")
    if t.size:
        axes[0].plot(t, base, "x", ms=3, color="grey", alpha=0.6, label="baseline: current latent")
    axes[0].set_xlabel("sim time the prediction is for [s]")
    axes[0].set_ylabel("|latent_pred - latent later|")
    axes[0].legend(fontsize=7)
    means_p = [float(np.mean(err[k == i])) if (k == i).any() else np.nan for i in range(len(offsets_s))]
    means_b = [float(np.mean(base[k == i])) if (k == i).any() else np.nan for i in range(len(offsets_s))]
    x = np.arange(len(offsets_s))
    axes[1].bar(x - 0.2, means_p, 0.4, label="world model prediction")
    axes[1].bar(x + 0.2, means_b, 0.4, color="grey", label="current latent (no change)")
    axes[1].set_xticks(x, [f"+{o:.2f} s" for o in offsets_s])
    axes[1].set_ylabel("mean distance")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def gripper(path: Path, rows: Sequence[tuple[str, Any]], title: str) -> Path:
    """One panel per episode: the gripper setpoint the controller sent, the sim's servo setpoint and
    the finger positions over time (mm from the centre, per finger), and in pick_place the prompted
    cube's height (right axis). `rows`: (panel title, e.g. the task and its prompt; a `GripperTrace`)."""
    plt = _pyplot()
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.1 * n + 0.9), squeeze=False)
    for ax, (label, tr) in zip(axes[:, 0], rows):
        ok = np.isfinite(tr.servo)
        t = tr.t[ok]
        ax.plot(t, tr.commanded[ok] * 1e3, lw=1.4, color="tab:blue", label="setpoint sent (controller)")
        ax.plot(t, tr.servo[ok] * 1e3, lw=1.0, ls=":", color="tab:purple", label="servo setpoint (sim)")
        for j in range(tr.fingers.shape[1]):
            ax.plot(t, tr.fingers[ok, j] * 1e3, lw=1.0, ls="--", color=("tab:orange", "tab:red")[j % 2],
                    label=f"finger {j + 1} position")  # fmt: skip
        ax.set_ylim(-2.0, 42.0)
        ax.set_ylabel("opening per\nfinger [mm]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(label, fontsize=8, loc="left")
        handles, labels = ax.get_legend_handles_labels()
        if tr.cube_lift is not None:
            ax2 = ax.twinx()
            ax2.plot(t, tr.cube_lift[ok] * 1e3, lw=1.0, color="tab:green", label="prompted cube height")
            top = float(np.nanmax(tr.cube_lift[ok])) * 1e3 if ok.any() else 0.0
            ax2.set_ylim(-5.0, max(60.0, 1.1 * top))
            ax2.set_ylabel("cube height [mm]", fontsize=8, color="tab:green")
            ax2.tick_params(labelsize=7)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="upper right", fontsize=6, ncol=2)
    axes[-1, 0].set_xlabel("sim time [s]")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
