"""Edits of a compiled MuJoCo model: sliding friction of all geoms, and body mass scaling.

Both act on the live `MjModel`, so they survive `env.reset()` (which only resets `MjData`); the
callers keep the base arrays to measure every change from.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np


def find_mujoco_model(env: Any) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """The (model, data) of a gymnasium MuJoCo env, through any wrappers; TypeError if it has none."""
    base = getattr(env, "unwrapped", env)
    model = getattr(base, "model", None)
    data = getattr(base, "data", None)
    if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
        raise TypeError(
            f"non-stationary physics needs a MuJoCo env (env.unwrapped.model/.data), "
            f"but {type(base).__name__} has no MuJoCo model"
        )
    return model, data


def set_sliding_friction(model: mujoco.MjModel, friction: float) -> None:
    """Set the sliding coefficient of ALL geoms to `friction`.

    MuJoCo combines two geoms' friction by the element-wise max, so changing only the floor could
    not lower friction; setting every geom is the same as editing `<default><geom friction>`.
    Torsional and rolling coefficients stay as they were.
    """
    model.geom_friction[:, 0] = friction


class MassScaler:
    """Scale every body's mass and inertia from the model's base values, as if compiled that way.

    After scaling, `mj_setConst` recomputes the derived constants (subtree masses, dof_M0,
    invweights, actuator_acc0); without it the dynamics are wrong. It does not refresh
    `stat.meaninertia` / `stat.meanmass`, which the compiler sets and the constraint solver's
    tolerance uses, so those are refreshed here the compiler's way (unless the XML fixed them): the
    result matches a model compiled from XML with scaled masses, field for field.
    """

    def __init__(self, model: mujoco.MjModel) -> None:
        self.base_mass = model.body_mass.copy()
        self.base_inertia = model.body_inertia.copy()
        # A value the XML set by hand (<statistic meaninertia=...>) is left alone.
        stat = model.stat
        self._auto_meaninertia = model.nv > 0 and np.isclose(stat.meaninertia, _sequential_mean(model.dof_M0))
        self._auto_meanmass = model.nbody > 1 and np.isclose(stat.meanmass, _sequential_mean(model.body_mass[1:]))

    def apply(self, model: mujoco.MjModel, data: mujoco.MjData, scale: float) -> None:
        """Scale masses to `scale` x base; the simulation state in `data` is kept."""
        # mj_setConst works in `data` at qpos0; keep the current state so a mid-episode restore is harmless.
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        saved = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, saved, spec)

        np.multiply(self.base_mass, scale, out=model.body_mass)
        np.multiply(self.base_inertia, scale, out=model.body_inertia)
        mujoco.mj_setConst(model, data)
        if self._auto_meaninertia:
            model.stat.meaninertia = _sequential_mean(model.dof_M0)
        if self._auto_meanmass:
            model.stat.meanmass = _sequential_mean(model.body_mass[1:])

        mujoco.mj_setState(model, data, saved, spec)
        mujoco.mj_forward(model, data)

    def restore(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Back to the base masses."""
        self.apply(model, data, 1.0)


def _sequential_mean(values: np.ndarray) -> float:
    """Mean summed left to right, as the compiler does (numpy's pairwise sum can differ in the last bit)."""
    return float(np.cumsum(values)[-1] / len(values))
