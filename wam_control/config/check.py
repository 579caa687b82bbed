"""`wam-control check-config FILE`: load a deployment YAML and print what it resolves to."""

from __future__ import annotations

import argparse

from wam_control.config.loader import ConfigError, load_config
from wam_control.config.presets import preset_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wam-control check-config", description=__doc__)
    parser.add_argument("config", help="deployment YAML, or a preset name (fr3, panda, ...)")
    args = parser.parse_args(argv)
    try:
        config = load_config(preset_path(args.config))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 1
    limits = config.limit_arrays()
    print(
        f"{config.source}: robot={config.robot} joints={config.dof} control_hz={config.control_hz:g} "
        f"command_interface={config.command_interface} cameras={','.join(config.cameras)}"
    )
    for i, joint in enumerate(config.joints):
        print(
            f"  {joint:<14} q=[{limits.q_min[i]:+.4f}, {limits.q_max[i]:+.4f}] v={limits.v_max[i]:.3g} "
            f"a={limits.a_max[i]:.3g} d={limits.d_max[i]:.3g} j={limits.j_max[i]:.4g}"
        )
    return 0
