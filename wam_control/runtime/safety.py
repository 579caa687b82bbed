"""Safety-limits filter: policy targets in, a command inside the joint envelope out (DESIGN.md §5).

Defence in depth, not a safety-rated function.

Model. Each joint is a discrete jerk-limited triple integrator at the control period dt:
    a_k = a_{k-1} + j_k dt,  v_k = v_{k-1} + a_k dt,  q_k = q_{k-1} + v_k dt
so the backward differences of the emitted positions (what the robot checks) are exactly the
filter's own v, a and jerk. Every tick the filter picks one jerk per joint, |j| <= j_max.

Guarantee. `_certify` is a cheap, conservative test T(q, v, a) that implies: the brake law
(`_brake_jerk`, a memoryless feedback) started from (q, v, a) keeps |a| <= a_max, |v| <= v_max and q in
[q_min, q_max] (margins included) and ends at v = a = 0. Each tick a joint takes the tracking law's
jerk only if the state it leads to passes T; otherwise it applies the brake law. So the state is
always either T-certified or on the brake trajectory of a certified state, and the brake law keeps
every limit on the way down: the limits hold on every tick, including during braking, ramp-in and
after re-arm. (test_safety_properties.py checks T => safe brake trajectory over random states.)

Tracking law (safety does not depend on it: any jerk is certified or replaced by the brake law). It
aims at two things: change nothing that is already feasible, and reach what is not close to
time-optimally. Per joint, with the ramped / velocity-scaled limits vs, as, js and the target's own
velocity and acceleration (backward differences, dropped when beyond vs / as):
1. Pass-through. The command is the target itself, bit for bit, when the step to it is inside the
   limits and the target's constant-acceleration extrapolation can be followed for two more ticks
   (the rest of the unique 3-tick plan onto it). Once locked on, the command's v and a are the
   stream's own, so this is just the stream's backward differences inside the limits.
2. Planned endgame. Otherwise the shortest of the minimum-norm jerk sequences of N = 4..24 ticks
   (gains precomputed in units of dt, `_PLANS`) that lands exactly on the target's extrapolated
   motion with |j|, |a|, |v| inside the limits on every tick; its first jerk is applied and the plan
   redone next tick, so N shrinks to the 3-tick pass-through. `_plan_reach` skips the search when no
   jerk-bounded sequence that short can exist.
3. Far field. Velocity setpoint: the target's velocity plus the speed from which it can still be
   matched in the distance left (jerk-limited trapezoid stop at brake_deceleration_fraction * as;
   no linear region, so no exponential tail), capped by vs and the same curve toward each position
   limit; acceleration setpoint sqrt((js dt)^2 + 2 js |ev|) - js dt (a^2 / 2js + a dt <= |ev|: lands on
   the setpoint without passing it, the velocity certification's own curve), jerk within js.
A target beyond the tracking window makes the window's edge the goal, moving with the robot's
measured velocity, never faster than can still stop at the real target. A target at or beyond a
position limit is aimed _PARK_GAP_TICKS2 a_max dt^2 inside it.

Two implementations of the same arithmetic: `SafetyFilter` in plain Python floats over the joints
(a 7-joint tick costs far less than the ~40 numpy ufunc calls the vectorised form needs), and
`BatchCore`, the same law over (batch, joint) arrays, used by the benchmark to run many adversarial
streams at once. Tests run identical streams through both and require identical commands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wam_control.config.schema import LimitArrays, SafetyConfig

# Certification tolerance (relative) so that float rounding at exactly-on-the-limit states is not
# mistaken for a violation; far below anything a robot's limit check resolves.
_TOL = 1e-9
# |v|, |a| below these at the end of a stop are rounding residue: snapped to exact zero (hold).
_SNAP_V = 1e-12
_SNAP_A = 1e-9
# Targets at or beyond a position limit are tracked to this many a_max * dt^2 inside it: the last
# ticks of a jerk-limited approach to a point exactly on the limit cannot be certified (the brake
# bound keeps one tick of motion in hand), so the filter parks just inside instead of retrying.
_PARK_GAP_TICKS2 = 10.0


JOINT_KINDS = (
    "position",  # target outside the position limits (clamped)
    "velocity",  # target stream moved faster than the velocity limit (no feed-forward)
    "tracking_error",  # |q_cmd - q_measured| too large: hold; or target beyond it: aim at its edge
    "envelope_acceleration",  # tracking step rejected by the certified envelope: braking instead
    "envelope_velocity",
    "envelope_position",
)
GLOBAL_KINDS = (
    "target_rejected.nonfinite",
    "target_rejected.shape",
    "state.missing",
    "state.stale",
    "state.invalid",
    "hold.no_target",
    "hold.fault",
    "fault.latched",
)
_K_POS, _K_VEL, _K_TRACK, _K_ENV_A, _K_ENV_V, _K_ENV_P = range(6)
_G_NONFINITE, _G_SHAPE, _G_MISSING, _G_STALE, _G_INVALID, _G_NO_TARGET, _G_FAULT, _G_LATCHED = range(8)


def _stop_distance(vabs: float, ap: float, jm: float, b: float) -> float:
    """Travel (>= 0) until v = 0 from speed `vabs` with acceleration `ap` along the motion, braking
    with jerk `jm` and deceleration `b` (continuous time; the discrete brake law travels no further
    than this plus one tick of motion, which `_certify` adds)."""
    if ap > 0.0:
        t0 = ap / jm
        v0 = vabs + ap * ap / (2.0 * jm)
        return vabs * t0 + ap * ap * ap / (3.0 * jm * jm) + _rest_stop(v0, jm, b)
    am = -ap
    if am * am <= 2.0 * jm * vabs:
        # On or above the braking curve: the state lies on the stop profile that starts at rest
        # acceleration with the (virtual) speed v0; subtract the part already behind it.
        v0 = vabs + am * am / (2.0 * jm)
        t0 = am / jm
        return _rest_stop(v0, jm, b) - (v0 * t0 - jm * t0 * t0 * t0 / 6.0)
    # Below the curve: velocity reaches zero before the deceleration is ramped out.
    t_s = (am - math.sqrt(am * am - 2.0 * jm * vabs)) / jm
    return vabs * t_s


def _rest_stop(v0: float, jm: float, b: float) -> float:
    """Jerk-limited stop distance from speed v0 at zero acceleration (trapezoidal or triangular)."""
    if v0 * jm >= b * b:
        tr = b / jm
        vc = b * b / (2.0 * jm)
        v1 = v0 - vc
        return (
            v0 * tr - jm * tr * tr * tr / 6.0 + (v1 * v1 - vc * vc) / (2.0 * b) + b * b * b / (6.0 * jm * jm)
        )
    return v0 * math.sqrt(v0 / jm)


def _brake_jerk(v: float, a: float, jm: float, b: float, dt: float) -> float:
    """Brake law: the jerk that drives (v, a) to rest within jerk `jm` and deceleration `b`.

    The next acceleration aims at the discrete braking curve a = -h(v), h(v) = (sqrt((jm dt)^2 +
    8 jm v) - jm dt) / 2: from a point on it, ramping the acceleration out at exactly +jm per tick
    lands on v = a = 0 (it maps the curve onto itself, one tick at a time). Capped by the
    deceleration b and by v/dt (never overshoot zero velocity in one tick).
    """
    jdt = jm * dt
    if v > 0.0 or (v == 0.0 and a > 0.0):
        h = 0.5 * (math.sqrt(jdt * jdt + 8.0 * jm * v) - jdt)
        target = -min(b, h, v / dt)
    elif v < 0.0 or a < 0.0:
        h = 0.5 * (math.sqrt(jdt * jdt - 8.0 * jm * v) - jdt)
        target = min(b, h, -v / dt)
    else:
        return 0.0
    j = (target - a) / dt
    if j > jm:
        return jm
    if j < -jm:
        return -jm
    return j


def _certify(
    q: float, v: float, a: float, lo: float, hi: float, vm: float, am_: float, jm: float, dt: float
) -> tuple[int, float, float]:
    """T(q, v, a): (0, reach_lo, reach_hi) if the brake law from here stays inside the limits, else
    (1 + kind, ...) with kind 0 acceleration, 1 velocity, 2 position. reach_* bound where the brake
    trajectory can go."""
    if abs(a) > am_ * (1.0 + _TOL):
        return 1, q, q
    if v > 0.0 or (v == 0.0 and a > 0.0):
        s = 1.0
    elif v < 0.0 or a < 0.0:
        s = -1.0
    else:
        if q < lo or q > hi:
            return 3, q, q
        return 0, q, q
    vabs = abs(v)
    ap = a * s
    if ap > 0.0:
        if vabs + ap * ap / (2.0 * jm) > vm * (1.0 + _TOL):
            return 2, q, q
    elif vabs > vm * (1.0 + _TOL):
        return 2, q, q
    ahead = _stop_distance(vabs, ap, jm, am_) + (vabs + abs(a) * dt) * dt
    # Below the braking curve the motion reverses briefly before it settles: bound that excursion.
    behind = 0.0
    if ap < 0.0 and ap * ap > 2.0 * jm * vabs:
        # Velocity crosses zero with acceleration sqrt(ap^2 - 2 jm vabs) still on: the reverse
        # speed it builds up before the brake law ramps it out must stay within the limit too.
        ac2 = ap * ap - 2.0 * jm * vabs
        if ac2 / (2.0 * jm) + math.sqrt(ac2) * dt > vm:
            return 2, q, q
        behind = _stop_distance(0.0, -ap, jm, am_) + abs(a) * dt * dt
    if s > 0.0:
        r_lo, r_hi = q - behind, q + ahead
    else:
        r_lo, r_hi = q - ahead, q + behind
    if r_lo < lo or r_hi > hi:
        return 3, r_lo, r_hi
    return 0, r_lo, r_hi


def _park_bounds(
    lo: Sequence[float], hi: Sequence[float], am: Sequence[float], dt: float
) -> tuple[list[float], list[float]]:
    """Where the tracking law aims for a target at or beyond a position limit: _PARK_GAP_TICKS2 *
    a_max * dt^2 inside it (a quarter of the range at most)."""
    gap = [min(_PARK_GAP_TICKS2 * am[i] * dt * dt, 0.25 * (hi[i] - lo[i])) for i in range(len(lo))]
    return [lo[i] + gap[i] for i in range(len(lo))], [hi[i] - gap[i] for i in range(len(lo))]


def _plan_rows(n_steps: int) -> tuple[tuple[float, float, float], ...]:
    """Minimum-norm jerk sequence (rows of the gain matrix) that brings the error state to zero in
    `n_steps` ticks, in units where dt = 1 (see `_track_jerk`)."""
    a = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    b = np.ones(3)
    c = np.stack([np.linalg.matrix_power(a, n_steps - 1 - m) @ b for m in range(n_steps)], axis=1)
    g = -np.linalg.pinv(c) @ np.linalg.matrix_power(a, n_steps)
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in g)


_PLAN_STEPS = (4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 20, 24)
_PLANS = tuple(_plan_rows(k) for k in _PLAN_STEPS)
_PLANS_NP = tuple(np.array(rows) for rows in _PLANS)
# Necessary conditions for any jerk sequence |u| <= js of at most _PLAN_STEPS[-1] ticks to zero the
# error (z0, z1, z2) (1 % slack for rounding): a cheap test that skips the plans when none can fit.
_NP = float(_PLAN_STEPS[-1])
_REACH_Z2 = 1.01 * _NP
_REACH_Z1 = 1.01 * (1.5 * _NP * _NP + 0.5 * _NP)
_REACH_Z0 = 1.01 * _NP * (_NP + 1.0) * (_NP + 2.0) / 6.0
_REACH_Z0_Z2 = _NP * (_NP + 1.0) / 2.0
# ... and the least jerk energy any such sequence needs, sum u^2 = z' Q z for the longest plan (a
# shorter plan followed by zero jerk is one of its sequences, so it bounds them all), is at most
# _NP js^2 when every |u| <= js.
_Q = (lambda g: g.T @ g)(np.array(_PLANS[-1]))
_Q00, _Q01, _Q02 = float(_Q[0, 0]), 2.0 * float(_Q[0, 1]), 2.0 * float(_Q[0, 2])
_Q11, _Q12, _Q22 = float(_Q[1, 1]), 2.0 * float(_Q[1, 2]), float(_Q[2, 2])
_REACH_ENERGY = 1.01 * _NP


def _plan_reach(z0: float, z1: float, z2: float, js: float) -> bool:
    """False when no plan in _PLANS can be feasible (see _REACH_*)."""
    a2 = z2 if z2 >= 0.0 else -z2
    a1 = z1 if z1 >= 0.0 else -z1
    a0 = z0 if z0 >= 0.0 else -z0
    return (
        a2 <= _REACH_Z2 * js
        and a1 <= _REACH_Z1 * js
        and a0 <= _NP * a1 + _REACH_Z0_Z2 * a2 + _REACH_Z0 * js
        and z0 * (_Q00 * z0 + _Q01 * z1 + _Q02 * z2) + z1 * (_Q11 * z1 + _Q12 * z2) + _Q22 * z2 * z2
        <= _REACH_ENERGY * js * js
    )


def _plan_reach_np(z0: np.ndarray, z1: np.ndarray, z2: np.ndarray, js: np.ndarray) -> np.ndarray:
    a2, a1, a0 = np.abs(z2), np.abs(z1), np.abs(z0)
    return (
        (a2 <= _REACH_Z2 * js)
        & (a1 <= _REACH_Z1 * js)
        & (a0 <= _NP * a1 + _REACH_Z0_Z2 * a2 + _REACH_Z0 * js)
        & (
            z0 * (_Q00 * z0 + _Q01 * z1 + _Q02 * z2) + z1 * (_Q11 * z1 + _Q12 * z2) + _Q22 * z2 * z2
            <= _REACH_ENERGY * js * js
        )
    )


def _track_jerk(
    qi: float,
    vi: float,
    ai: float,
    p: float,
    vt: float,
    at: float,
    vs: float,
    as_: float,
    js: float,
    bn: float,
    lo: float,
    hi: float,
    dt: float,
) -> float:
    """Tracking jerk toward the target p (moving with vt, at) when it is not reachable in one tick."""
    # Endgame: the shortest planned jerk sequence that lands exactly on the target's extrapolated
    # motion within the (ramped) limits. Error state in jerk units (dt = 1).
    dt2 = dt * dt
    z0 = (qi - (p - vt * dt)) / (dt2 * dt)
    z1 = (vi - (vt - at * dt)) / dt2
    z2 = (ai - at) / dt
    # A plan's velocity error closes by at most (as + |at|) dt per tick: skip when it cannot.
    aat = at if at >= 0.0 else -at
    avz = z1 if z1 >= 0.0 else -z1
    if avz * dt <= _REACH_Z2 * (as_ + aat) and _plan_reach(z0, z1, z2, js):
        for rows in _PLANS:
            aa, vv = ai, vi
            for g0, g1, g2 in rows:
                u = g0 * z0 + g1 * z1 + g2 * z2
                if u > js or u < -js:
                    break
                aa = aa + u * dt
                if aa > as_ or aa < -as_:
                    break
                vv = vv + aa * dt
                if vv > vs or vv < -vs:
                    break
            else:
                g0, g1, g2 = rows[0]
                return g0 * z0 + g1 * z1 + g2 * z2
    return _approach_jerk(qi, vi, ai, p, vt, vs, as_, js, bn, lo, hi, dt, math.inf)


def _approach_jerk(
    qi: float,
    vi: float,
    ai: float,
    p: float,
    vt: float,
    vs: float,
    as_: float,
    js: float,
    bn: float,
    lo: float,
    hi: float,
    dt: float,
    reach: float,
) -> float:
    """Far field: velocity setpoint from which the target (moving with vt) can still be matched within
    the distance left (a jerk-limited trapezoid stop with deceleration bn), capped by the speed that can
    still stop within `reach`; acceleration setpoint on the discrete jerk curve toward it."""
    c = bn * bn / (2.0 * js)
    e = p - qi
    ae = e if e >= 0.0 else -e
    pv = math.sqrt(c * c + 2.0 * bn * ae) - c
    vd = vt + pv if e >= 0.0 else vt - pv
    if reach < math.inf:
        cap = math.sqrt(c * c + 2.0 * bn * reach) - c
        if vd > cap:
            vd = cap
        elif vd < -cap:
            vd = -cap
    if vd > vs:
        vd = vs
    elif vd < -vs:
        vd = -vs
    if vd > 0.0:
        x = hi - qi
        cap = math.sqrt(c * c + 2.0 * bn * x) - c if x > 0.0 else 0.0
        if vd > cap:
            vd = cap
    elif vd < 0.0:
        x = qi - lo
        cap = math.sqrt(c * c + 2.0 * bn * x) - c if x > 0.0 else 0.0
        if vd < -cap:
            vd = -cap
    ev = vd - vi
    aev = ev if ev >= 0.0 else -ev
    jsdt = js * dt
    ad = math.sqrt(jsdt * jsdt + 2.0 * js * aev) - jsdt
    if ad > as_:
        ad = as_
    if ad * dt > aev:  # never past the velocity setpoint in one tick
        ad = aev / dt
    j = ((ad if ev >= 0.0 else -ad) - ai) / dt
    if j > js:
        return js
    if j < -js:
        return -js
    return j


class SafetyFilter:
    """Per-tick limiter between the chunk scheduler and the joint command (see module docstring)."""

    def __init__(
        self, limits: LimitArrays, safety: SafetyConfig, dt: float, joint_names: Sequence[str]
    ) -> None:
        n = limits.dof
        if len(joint_names) != n:
            raise ValueError(f"SafetyFilter: {len(joint_names)} joint names for {n} joints in the limits")
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"SafetyFilter: control period dt must be a positive number, got {dt}")
        self.joint_names = tuple(joint_names)
        self.dt = float(dt)
        self.safety = safety
        self._n = n
        p = _joint_params(limits, self.dt, self.joint_names)
        self._lo, self._hi, self._vm, self._am, self._jm = p
        self._lo_park, self._hi_park = _park_bounds(self._lo, self._hi, self._am, self.dt)
        self._track = float(limits.max_tracking_error)
        self._frac = float(safety.brake_deceleration_fraction)
        # Effective position bounds: equal to the limits except after seeding outside them, where
        # they start at the seed and only ever tighten toward the limits (never "jump inside").
        self._lo_eff = list(self._lo)
        self._hi_eff = list(self._hi)
        self._widened = False
        # Commanded state (plain floats: the hot path never touches numpy per joint).
        self._q = [0.0] * n
        self._v = [0.0] * n
        self._a = [0.0] * n
        self._j = [0.0] * n
        self._p_prev = [0.0] * n
        self._vt_prev = [0.0] * n
        self._qm_prev = [0.0] * n
        # Consecutive ticks each joint passed its target through (pass-through fast path from 2).
        self._locked = [0] * n
        self._have_prev = False
        self._seeded = False
        self._ticks_since_seed = 0
        self._bad_in_row = 0
        self._scale = 1.0
        self.fault: str | None = None
        self.holding = True
        self._joint_counts = [0] * (n * len(JOINT_KINDS))
        self._global_counts = [0] * len(GLOBAL_KINDS)
        self._fault_reasons: dict[str, int] = {}
        self._out = np.zeros(n)
        self._arrays = {name: np.zeros(n) for name in ("q", "v", "a", "jerk")}
        self._views = {}
        for name, arr in self._arrays.items():
            view = arr.view()
            view.flags.writeable = False
            self._views[name] = view

    # ---------------------------------------------------------------------------------- state
    @property
    def q(self) -> np.ndarray:
        return self._view("q", self._q)

    @property
    def v(self) -> np.ndarray:
        return self._view("v", self._v)

    @property
    def a(self) -> np.ndarray:
        return self._view("a", self._a)

    @property
    def jerk(self) -> np.ndarray:
        return self._view("jerk", self._j)

    def _view(self, name: str, values: list[float]) -> np.ndarray:
        self._arrays[name][:] = values
        return self._views[name]

    @property
    def stopped(self) -> bool:
        """True when the commanded motion is at rest (v = a = 0 on every joint)."""
        return not any(self._v) and not any(self._a)

    @property
    def seeded(self) -> bool:
        return self._seeded

    @property
    def ramp(self) -> float:
        """Current ramp-in factor on velocity, acceleration and jerk (ramp_in_scale .. 1)."""
        s = self.safety
        if s.ramp_in_s <= 0.0:
            return 1.0
        x = self._ticks_since_seed * self.dt / s.ramp_in_s
        return 1.0 if x >= 1.0 else s.ramp_in_scale + (1.0 - s.ramp_in_scale) * x

    # -------------------------------------------------------------------------------- control
    def reset(self, q_measured: np.ndarray) -> None:
        """Seed at rest from the measured positions and start the ramp-in: a new command sequence.

        A latched fault stays latched (only `rearm` clears it).
        """
        qm = self._measured_list(q_measured)
        if qm is None:
            raise ValueError(
                f"SafetyFilter.reset: expected {self._n} finite joint positions "
                f"({', '.join(self.joint_names)}), got {q_measured!r}"
            )
        self._seed(qm)

    def _seed(self, q0: list[float]) -> None:
        n = self._n
        for i in range(n):
            self._q[i] = q0[i]
            self._v[i] = self._a[i] = self._j[i] = 0.0
            self._lo_eff[i] = min(self._lo[i], q0[i])
            self._hi_eff[i] = max(self._hi[i], q0[i])
            if q0[i] < self._lo[i] or q0[i] > self._hi[i]:
                self._joint_counts[i * len(JOINT_KINDS) + _K_POS] += 1
        self._widened = self._lo_eff != self._lo or self._hi_eff != self._hi
        self._have_prev = False
        self._seeded = True
        self._ticks_since_seed = 0
        self._bad_in_row = 0
        self.holding = True

    def latch(self, reason: str) -> None:
        """Latch a fault (e-stop, inference crash, repeated bad input): brake to hold until rearm()."""
        if self.fault is None:
            self.fault = reason
            self._global_counts[_G_LATCHED] += 1
        self._fault_reasons[reason] = self._fault_reasons.get(reason, 0) + 1

    def rearm(self, q_measured: np.ndarray | None) -> bool:
        """Clear the fault and restart (ramp-in) once the commanded motion has stopped.

        The command resumes from the held commanded position when the robot is there (within the
        tracking-error bound): jumping to the measured q would break the jerk limit. When the robot
        is elsewhere (moved during the stop), this is a new motion that starts at the measured q, as
        `reset` does. Returns False, changing nothing, while still moving or without a valid
        measurement.
        """
        if not self._seeded or not self.stopped:
            return False
        qm = self._measured_list(q_measured)
        if qm is None:
            return False
        if all(abs(qm[i] - self._q[i]) <= self._track for i in range(self._n)):
            self._seed(list(self._q))
        else:
            self._seed(qm)
        self.fault = None
        return True

    def set_velocity_scale(self, scale: float) -> None:
        """Scale the velocity the tracking law aims for, in (0, 1]; braking is never slowed by it."""
        if not (0.0 < scale <= 1.0):
            raise ValueError(f"SafetyFilter.set_velocity_scale: expected a scale in (0, 1], got {scale}")
        self._scale = float(scale)

    def interventions(self) -> dict[str, int]:
        """Nonzero counters: '<joint>.<kind>' (JOINT_KINDS), GLOBAL_KINDS and 'fault.<reason>'."""
        out: dict[str, int] = {}
        nk = len(JOINT_KINDS)
        for i, name in enumerate(self.joint_names):
            for k, kind in enumerate(JOINT_KINDS):
                c = self._joint_counts[i * nk + k]
                if c:
                    out[f"{name}.{kind}"] = c
        for g, kind in enumerate(GLOBAL_KINDS):
            if self._global_counts[g]:
                out[kind] = self._global_counts[g]
        for reason, c in self._fault_reasons.items():
            out[f"fault.{reason}"] = c
        return out

    def _measured_list(self, q: object) -> list[float] | None:
        if not isinstance(q, np.ndarray):
            if q is None:
                return None
            try:
                q = np.asarray(q, dtype=np.float64)
            except (TypeError, ValueError):
                return None
        if q.shape != (self._n,) or q.dtype.kind not in "fiu":
            return None
        values: list[float] = q.tolist()
        # sum() propagates NaN and inf: one C call instead of a per-element check.
        if not math.isfinite(sum(values)):
            return None
        return values

    def step(
        self, target: np.ndarray | None, q_measured: np.ndarray | None, state_age_s: float
    ) -> np.ndarray:
        """One control period. Returns the internal q_cmd buffer (copy it to keep it)."""
        if not self._seeded:
            raise RuntimeError("SafetyFilter.step before reset(): seed it from a measured joint state first")
        n = self._n
        gc = self._global_counts
        jc = self._joint_counts
        nk = len(JOINT_KINDS)
        self._ticks_since_seed += 1

        hold = False
        if self.fault is not None:
            hold = True
            gc[_G_FAULT] += 1
        qm: list[float] | None = None
        if q_measured is None:
            hold = True
            gc[_G_MISSING] += 1
        elif not (state_age_s <= self.safety.max_state_age_s):  # NaN age counts as stale
            hold = True
            gc[_G_STALE] += 1
        else:
            qm = self._measured_list(q_measured)
            if qm is None:
                hold = True
                gc[_G_INVALID] += 1

        p: list[float] | None = None
        if target is None:
            hold = True
            gc[_G_NO_TARGET] += 1
        else:
            p = self._target_list(target)
            if p is None:
                hold = True
                self._bad_in_row += 1
                if self._bad_in_row >= self.safety.max_consecutive_bad_targets:
                    self.latch("repeated_bad_target")
            else:
                self._bad_in_row = 0

        q, v, a, jl = self._q, self._v, self._a, self._j
        track = self._track
        if qm is not None and not hold:
            for i in range(n):
                if abs(q[i] - qm[i]) > track:
                    jc[i * nk + _K_TRACK] += 1
                    hold = True

        lo, hi, vmax, amax, jmax = self._lo_eff, self._hi_eff, self._vm, self._am, self._jm
        dt = self.dt
        if hold or p is None or qm is None:
            for i in range(n):
                jm = jmax[i]
                j = _brake_jerk(v[i], a[i], jm, amax[i], dt)
                ai = a[i] + j * dt
                vi = v[i] + ai * dt
                if -_SNAP_V < vi < _SNAP_V and -_SNAP_A < ai < _SNAP_A:
                    vi = ai = 0.0
                    j = -a[i] / dt
                jl[i] = j
                a[i] = ai
                v[i] = vi
                q[i] = q[i] + vi * dt
            self._have_prev = False
            self.holding = True
        else:
            self.holding = False
            r = self.ramp
            bfrac = self._frac * r
            scale = self._scale * r
            have_prev = self._have_prev
            pp, vtp, qmp = self._p_prev, self._vt_prev, self._qm_prev
            lk = self._locked
            if not have_prev:
                lk[:] = [0] * n
            lo_lim, hi_lim = self._lo, self._hi
            lo_park, hi_park = self._lo_park, self._hi_park
            widened = self._widened
            tol1 = 1.0 + _TOL
            for i in range(n):
                qi, vi, ai = q[i], v[i], a[i]
                vm_i, am_i, jm = vmax[i], amax[i], jmax[i]
                lo_i, hi_i = lo[i], hi[i]
                vs = vm_i * scale
                as_ = am_i * r
                js = jm * r
                # Target: inside the position limits and within the tracking bound of the robot.
                pi = p[i]
                if pi > hi_lim[i] or pi < lo_lim[i]:
                    jc[i * nk + _K_POS] += 1
                if pi > hi_park[i]:
                    pi = hi_park[i]
                elif pi < lo_park[i]:
                    pi = lo_park[i]
                # The target's own velocity and acceleration (backward differences), used only when
                # plausible.
                vt = at = 0.0
                if have_prev:
                    vt = (pi - pp[i]) / dt
                    if vt > vs or vt < -vs:
                        vt = 0.0
                        jc[i * nk + _K_VEL] += 1
                    else:
                        at = (vt - vtp[i]) / dt
                        if at > as_ or at < -as_:
                            at = 0.0
                pp[i] = pi
                vtp[i] = vt
                m = qm[i]
                if m - track <= pi <= m + track:
                    # Pass-through: the target itself when the step to it is inside the limits.
                    v1 = (pi - qi) / dt
                    a1 = (v1 - vi) / dt
                    j = (a1 - ai) / dt
                    direct = -js <= j <= js and -as_ <= a1 <= as_ and -vs <= v1 <= vs
                    if direct:
                        # ... and the target's motion can be followed on from there: the next two
                        # steps along its extrapolation (the rest of the 3-tick plan) fit too. Its
                        # acceleration `at` is inside the limit already.
                        v2 = vt + at * dt
                        v3 = v2 + at * dt
                        if lk[i] >= 2:
                            # Locked on for two ticks: q, v are the stream's previous ones, so
                            # v1 = vt and a1 = at exactly and the rest of the plan has zero jerk
                            # (to rounding); only its velocities are left to check.
                            direct = -vs <= v2 <= vs and -vs <= v3 <= vs
                        else:
                            a2 = (v2 - v1) / dt
                            direct = (
                                -vs <= v2 <= vs
                                and -vs <= v3 <= vs
                                and -as_ <= a2 <= as_
                                and -js <= (a2 - a1) / dt <= js
                                and -js <= (at - a2) / dt <= js
                            )
                    if direct:
                        q1 = pi
                    else:
                        j = _track_jerk(qi, vi, ai, pi, vt, at, vs, as_, js, bfrac * am_i, lo_i, hi_i, dt)
                        a1 = ai + j * dt
                        v1 = vi + a1 * dt
                        q1 = qi + v1 * dt
                else:
                    # Target beyond the tracking window: head for the window's edge, which moves with
                    # the robot, never faster than the target itself can still be matched.
                    direct = False
                    jc[i * nk + _K_TRACK] += 1
                    edge = m + track if pi > m else m - track
                    ve = (m - qmp[i]) / dt if have_prev else 0.0
                    if ve > vs or ve < -vs:
                        ve = 0.0
                    j = _approach_jerk(
                        qi, vi, ai, edge, ve, vs, as_, js, bfrac * am_i, lo_i, hi_i, dt, abs(pi - qi)
                    )
                    a1 = ai + j * dt
                    v1 = vi + a1 * dt
                    q1 = qi + v1 * dt
                qmp[i] = m
                # Certification. Fast path: a cruder stop-distance bound (top speed times a bound on
                # the stop time) that, when it passes, implies the exact test passes.
                kind = 0
                aa1 = a1 if a1 >= 0.0 else -a1
                if aa1 > am_i * tol1:
                    kind = 1
                else:
                    vabs = v1 if v1 >= 0.0 else -v1
                    ap = a1 if v1 > 0.0 or (v1 == 0.0 and a1 > 0.0) else -a1
                    vq = vabs + ap * ap / (2.0 * jm)
                    if (vq if ap > 0.0 else vabs) > vm_i * tol1:
                        kind = 2
                    elif widened or (ap < 0.0 and ap * ap > 2.0 * jm * vabs):
                        kind = -1
                    else:
                        d = (
                            vq * (vq / am_i + (am_i + (ap if ap > 0.0 else 0.0)) / jm)
                            + (vabs + aa1 * dt) * dt
                        )
                        if not (lo_i <= q1 - d and q1 + d <= hi_i):
                            kind = -1
                if kind < 0:
                    kind, r_lo, r_hi = _certify(q1, v1, a1, lo_i, hi_i, vm_i, am_i, jm, dt)
                    if not kind and widened:
                        self._tighten(i, r_lo, r_hi)
                if kind:
                    jc[i * nk + _K_ENV_A - 1 + kind] += 1
                    j = _brake_jerk(vi, ai, jm, am_i, dt)
                    a1 = ai + j * dt
                    v1 = vi + a1 * dt
                    q1 = qi + v1 * dt
                    lk[i] = 0
                elif direct:
                    lk[i] += 1
                else:
                    lk[i] = 0
                jl[i] = j
                a[i] = a1
                v[i] = v1
                q[i] = q1
            self._have_prev = True
        out = self._out
        out[:] = q
        return out

    def _tighten(self, i: int, r_lo: float, r_hi: float) -> None:
        if self._lo_eff[i] < self._lo[i]:
            self._lo_eff[i] = min(self._lo[i], max(self._lo_eff[i], r_lo))
        if self._hi_eff[i] > self._hi[i]:
            self._hi_eff[i] = max(self._hi[i], min(self._hi_eff[i], r_hi))
        self._widened = self._lo_eff != self._lo or self._hi_eff != self._hi

    def _target_list(self, target: object) -> list[float] | None:
        gc = self._global_counts
        if not isinstance(target, np.ndarray):
            try:
                target = np.asarray(target, dtype=np.float64)
            except (TypeError, ValueError):
                gc[_G_SHAPE] += 1
                return None
        if target.shape != (self._n,) or target.dtype.kind not in "fiu":
            gc[_G_SHAPE] += 1
            return None
        values: list[float] = target.tolist()
        if not math.isfinite(sum(values)):
            gc[_G_NONFINITE] += 1
            return None
        return values


class BatchCore:
    """The filter's tracking law, certification and brake law over (batch, joint) arrays.

    The same arithmetic as `SafetyFilter.step`, operation for operation, for running many
    independent streams at once (the benchmark). It leaves input validation, counters and fault
    latching to the caller, which passes per-row masks instead: `usable` rows have a valid target
    and a valid, fresh measurement and no fault; every other row brakes to hold. Seeds must lie
    inside the position limits.
    """

    def __init__(self, limits: LimitArrays, safety: SafetyConfig, dt: float, batch: int) -> None:
        names = [f"joint{i + 1}" for i in range(limits.dof)]
        lo, hi, vm, am, jm = _joint_params(limits, float(dt), names)
        self.dt = float(dt)
        self.safety = safety
        self.lo, self.hi = np.array(lo), np.array(hi)
        lo_park, hi_park = _park_bounds(lo, hi, am, self.dt)
        self.lo_park, self.hi_park = np.array(lo_park), np.array(hi_park)
        self.vm, self.am, self.jm = np.array(vm), np.array(am), np.array(jm)
        self.track = float(limits.max_tracking_error)
        self.frac = float(safety.brake_deceleration_fraction)
        shape = (int(batch), limits.dof)
        self.q = np.zeros(shape)
        self.v = np.zeros(shape)
        self.a = np.zeros(shape)
        self.j = np.zeros(shape)
        self.p_prev = np.zeros(shape)
        self.vt_prev = np.zeros(shape)
        self.locked = np.zeros(shape, dtype=np.int64)
        self.qm_prev = np.zeros(shape)
        self.have_prev = np.zeros(shape[0], dtype=bool)
        self.ticks = np.zeros(shape[0])
        self.velocity_scale = np.ones(shape[0])
        self.holding = np.ones(shape[0], dtype=bool)
        self.envelope_brakes = 0
        """Joint-ticks where certification rejected the tracking step (braked instead)."""

    def reset(self, q0: np.ndarray, rows: np.ndarray | None = None) -> None:
        sel = slice(None) if rows is None else rows
        q0 = np.asarray(q0, dtype=np.float64)
        if np.any(q0 < self.lo) or np.any(q0 > self.hi):
            raise ValueError("BatchCore.reset: seeds must lie inside the position limits")
        self.q[sel] = q0
        self.v[sel] = 0.0
        self.a[sel] = 0.0
        self.j[sel] = 0.0
        self.have_prev[sel] = False
        self.locked[sel] = 0
        self.ticks[sel] = 0.0

    def ramp(self) -> np.ndarray:
        s = self.safety
        if s.ramp_in_s <= 0.0:
            return np.ones_like(self.ticks)
        x = self.ticks * self.dt / s.ramp_in_s
        return np.where(x >= 1.0, 1.0, s.ramp_in_scale + (1.0 - s.ramp_in_scale) * x)

    def step(self, target: np.ndarray, q_measured: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """One tick for every row; returns the commanded positions (B, n) (internal array)."""
        dt = self.dt
        lo, hi, vmax, amax, jmax = self.lo, self.hi, self.vm, self.am, self.jm
        q, v, a = self.q, self.v, self.a
        self.ticks += 1.0
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            usable = usable & ~np.any(np.abs(q - q_measured) > self.track, axis=1)
            r = self.ramp()[:, None]
            scale = self.velocity_scale[:, None] * r
            vs = vmax * scale
            as_ = amax * r
            js = jmax * r
            bn = (self.frac * r) * amax
            pi = np.minimum(np.maximum(target, self.lo_park), self.hi_park)
            hp = self.have_prev[:, None]
            vt = (pi - self.p_prev) / dt
            vt_ok = hp & (vt <= vs) & (vt >= -vs)
            vt = np.where(vt_ok, vt, 0.0)
            at = (vt - self.vt_prev) / dt
            at = np.where(vt_ok & (at <= as_) & (at >= -as_), at, 0.0)
            m = q_measured
            inwin = (m - self.track <= pi) & (pi <= m + self.track)
            # Pass-through, with the rest of the 3-tick plan along the target's extrapolation.
            v1d = (pi - q) / dt
            a1d = (v1d - v) / dt
            jd = (a1d - a) / dt
            v2 = vt + at * dt
            v3 = v2 + at * dt
            a2 = (v2 - v1d) / dt
            direct = inwin & _inside(jd, js) & _inside(a1d, as_) & _inside(v1d, vs)
            direct &= _inside(v2, vs) & _inside(v3, vs)
            locked = hp & (self.locked >= 2)
            direct &= locked | (_inside(a2, as_) & _inside((a2 - a1d) / dt, js) & _inside((at - a2) / dt, js))
            dt2 = dt * dt
            # Planned endgame (shortest feasible plan), as `_track_jerk`.
            z0 = (q - (pi - vt * dt)) / (dt2 * dt)
            z1 = (v - (vt - at * dt)) / dt2
            z2 = (a - at) / dt
            found = np.zeros(q.shape, dtype=bool)
            j_plan = np.zeros(q.shape)
            cand = np.abs(z1) * dt <= _REACH_Z2 * (as_ + np.abs(at))
            idx = np.nonzero(inwin & ~direct & cand & _plan_reach_np(z0, z1, z2, js))
            if idx[0].size:
                sz0, sz1, sz2 = z0[idx], z1[idx], z2[idx]
                sa, sv, sjs, sas, svs = a[idx], v[idx], js[idx], as_[idx], vs[idx]
                sfound = np.zeros(sz0.shape, dtype=bool)
                sj = np.zeros(sz0.shape)
                for g in _PLANS_NP:
                    # The whole plan at once; accumulate adds in sequence, as the per-tick loop.
                    uu = g[:, 0, None] * sz0 + g[:, 1, None] * sz1 + g[:, 2, None] * sz2
                    aa = np.add.accumulate(np.concatenate([sa[None], uu * dt]), axis=0)[1:]
                    vv = np.add.accumulate(np.concatenate([sv[None], aa * dt]), axis=0)[1:]
                    ok_plan = _inside(uu, sjs) & _inside(aa, sas) & _inside(vv, svs)
                    ok_plan = ~sfound & np.all(ok_plan, axis=0)
                    sj = np.where(ok_plan, uu[0], sj)
                    sfound |= ok_plan
                found[idx] = sfound
                j_plan[idx] = sj
            # Far field toward the target, or toward the tracking window's edge when it is outside.
            edge = np.where(pi > m, m + self.track, m - self.track)
            ve = np.where(hp, (m - self.qm_prev) / dt, 0.0)
            ve = np.where((ve > vs) | (ve < -vs), 0.0, ve)
            j_far = _approach_jerk_np(
                q,
                v,
                a,
                np.where(inwin, pi, edge),
                np.where(inwin, vt, ve),
                vs,
                as_,
                js,
                bn,
                lo,
                hi,
                dt,
                np.where(inwin, np.inf, np.abs(pi - q)),
            )
            jn = np.where(direct, jd, np.where(inwin & found, j_plan, j_far))
            a1 = a + jn * dt
            v1 = v + a1 * dt
            q1 = q + v1 * dt
            a1 = np.where(direct, a1d, a1)
            v1 = np.where(direct, v1d, v1)
            q1 = np.where(direct, pi, q1)
            ok = _certify_np(q1, v1, a1, lo, hi, vmax, amax, jmax, dt)
            take = usable[:, None] & ok
            self.envelope_brakes += int(np.count_nonzero(usable[:, None] & ~ok))
            jb = _brake_jerk_np(v, a, jmax, amax, dt)
            ab = a + jb * dt
            vb = v + ab * dt
            snap = ~usable[:, None] & (np.abs(vb) < _SNAP_V) & (np.abs(ab) < _SNAP_A)
            jb = np.where(snap, -a / dt, jb)
            ab = np.where(snap, 0.0, ab)
            vb = np.where(snap, 0.0, vb)
            qb = q + vb * dt
            self.j[:] = np.where(take, jn, jb)
            self.a[:] = np.where(take, a1, ab)
            self.v[:] = np.where(take, v1, vb)
            self.q[:] = np.where(take, q1, qb)
            keep = usable[:, None]
            self.locked[:] = np.where(take & direct, np.where(hp, self.locked, 0) + 1, 0)
            self.p_prev[:] = np.where(keep, pi, self.p_prev)
            self.vt_prev[:] = np.where(keep, vt, self.vt_prev)
            self.qm_prev[:] = np.where(keep, m, self.qm_prev)
            self.have_prev[:] = usable
            self.holding[:] = ~usable
        return self.q


def _inside(x: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """-bound <= x <= bound (False for NaN), as the per-tick filter's chained comparisons."""
    return (x >= -bound) & (x <= bound)


def _approach_jerk_np(
    qi: np.ndarray,
    vi: np.ndarray,
    ai: np.ndarray,
    p: np.ndarray,
    vt: np.ndarray,
    vs: np.ndarray,
    as_: np.ndarray,
    js: np.ndarray,
    bn: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    dt: float,
    reach: np.ndarray,
) -> np.ndarray:
    """`_approach_jerk` over arrays (operation for operation)."""
    c = bn * bn / (2.0 * js)
    e = p - qi
    ae = np.abs(e)
    pv = np.sqrt(c * c + 2.0 * bn * ae) - c
    vd = np.where(e >= 0.0, vt + pv, vt - pv)
    cap = np.sqrt(c * c + 2.0 * bn * reach) - c
    vd = np.where(vd > cap, cap, np.where(vd < -cap, -cap, vd))
    vd = np.where(vd > vs, vs, np.where(vd < -vs, -vs, vd))
    x = hi - qi
    cap = np.where(x > 0.0, np.sqrt(c * c + 2.0 * bn * np.maximum(x, 0.0)) - c, 0.0)
    vd = np.where((vd > 0.0) & (vd > cap), cap, vd)
    x = qi - lo
    cap = np.where(x > 0.0, np.sqrt(c * c + 2.0 * bn * np.maximum(x, 0.0)) - c, 0.0)
    vd = np.where((vd < 0.0) & (vd < -cap), -cap, vd)
    ev = vd - vi
    aev = np.abs(ev)
    jsdt = js * dt
    ad = np.sqrt(jsdt * jsdt + 2.0 * js * aev) - jsdt
    ad = np.where(ad > as_, as_, ad)
    ad = np.where(ad * dt > aev, aev / dt, ad)
    j = (np.where(ev >= 0.0, ad, -ad) - ai) / dt
    return np.where(j > js, js, np.where(j < -js, -js, j))


def _rest_stop_np(v0: np.ndarray, jm: np.ndarray, b: np.ndarray) -> np.ndarray:
    tr = b / jm
    vc = b * b / (2.0 * jm)
    v1 = v0 - vc
    trap = v0 * tr - jm * tr * tr * tr / 6.0 + (v1 * v1 - vc * vc) / (2.0 * b) + b * b * b / (6.0 * jm * jm)
    return np.where(v0 * jm >= b * b, trap, v0 * np.sqrt(v0 / jm))


def _stop_distance_np(vabs: np.ndarray, ap: np.ndarray, jm: np.ndarray, b: np.ndarray) -> np.ndarray:
    t0 = ap / jm
    v0 = vabs + ap * ap / (2.0 * jm)
    d_pos = vabs * t0 + ap * ap * ap / (3.0 * jm * jm) + _rest_stop_np(v0, jm, b)
    am = -ap
    v0 = vabs + am * am / (2.0 * jm)
    t0 = am / jm
    d_on = _rest_stop_np(v0, jm, b) - (v0 * t0 - jm * t0 * t0 * t0 / 6.0)
    t_s = (am - np.sqrt(np.maximum(am * am - 2.0 * jm * vabs, 0.0))) / jm
    return np.where(ap > 0.0, d_pos, np.where(am * am <= 2.0 * jm * vabs, d_on, vabs * t_s))


def _brake_jerk_np(v: np.ndarray, a: np.ndarray, jm: np.ndarray, b: np.ndarray, dt: float) -> np.ndarray:
    jdt = jm * dt
    up = (v > 0.0) | ((v == 0.0) & (a > 0.0))
    down = ~up & ((v < 0.0) | (a < 0.0))
    h_up = 0.5 * (np.sqrt(np.maximum(jdt * jdt + 8.0 * jm * v, 0.0)) - jdt)
    h_down = 0.5 * (np.sqrt(np.maximum(jdt * jdt - 8.0 * jm * v, 0.0)) - jdt)
    target = np.where(
        up,
        -np.minimum(np.minimum(b, h_up), v / dt),
        np.where(down, np.minimum(np.minimum(b, h_down), -v / dt), a),
    )
    return np.minimum(np.maximum((target - a) / dt, -jm), jm)


def _certify_np(
    q: np.ndarray,
    v: np.ndarray,
    a: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    vm: np.ndarray,
    am_: np.ndarray,
    jm: np.ndarray,
    dt: float,
) -> np.ndarray:
    """`_certify` over arrays: True where the state passes."""
    up = (v > 0.0) | ((v == 0.0) & (a > 0.0))
    down = ~up & ((v < 0.0) | (a < 0.0))
    s = np.where(up, 1.0, np.where(down, -1.0, 0.0))
    vabs = np.abs(v)
    aabs = np.abs(a)
    ap = a * s
    bad = aabs > am_ * (1.0 + _TOL)
    bad |= np.where(ap > 0.0, vabs + ap * ap / (2.0 * jm), vabs) > vm * (1.0 + _TOL)
    below = (ap < 0.0) & (ap * ap > 2.0 * jm * vabs)
    ac2 = ap * ap - 2.0 * jm * vabs
    bad |= below & (ac2 / (2.0 * jm) + np.sqrt(np.maximum(ac2, 0.0)) * dt > vm)
    ahead = _stop_distance_np(vabs, ap, jm, am_) + (vabs + aabs * dt) * dt
    ahead = np.where(s != 0.0, ahead, 0.0)
    behind = np.where(below, _stop_distance_np(np.zeros_like(ap), -ap, jm, am_) + aabs * dt * dt, 0.0)
    r_lo = np.where(s > 0.0, q - behind, q - ahead)
    r_hi = np.where(s > 0.0, q + ahead, q + behind)
    bad |= (r_lo < lo) | (r_hi > hi)
    return ~bad


def _joint_params(
    limits: LimitArrays, dt: float, names: Sequence[str]
) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """Per-joint (q_min, q_max, v_max, a_max, j_max) as floats, validated for the filter.

    The acceleration bound is min(a_max, d_max) in both directions: a separate deceleration limit
    would switch meaning as the velocity crosses zero, which a jerk-limited command cannot follow.
    A joint without a jerk limit gets 2 a_max / dt (acceleration may swing fully in one tick).
    """
    lo = [float(x) for x in limits.q_min]
    hi = [float(x) for x in limits.q_max]
    vm = [float(x) for x in limits.v_max]
    am = [float(min(x, y)) for x, y in zip(limits.a_max, limits.d_max)]
    jm = []
    for i, name in enumerate(names):
        if not (vm[i] > 0 and math.isfinite(vm[i])):
            raise ValueError(
                f"SafetyFilter: joint '{name}' needs a finite positive velocity limit, got {vm[i]}"
            )
        if not (am[i] > 0 and math.isfinite(am[i])):
            raise ValueError(
                f"SafetyFilter: joint '{name}' needs a finite positive acceleration limit, got {am[i]}"
            )
        if not lo[i] < hi[i]:
            raise ValueError(
                f"SafetyFilter: joint '{name}' position range [{lo[i]}, {hi[i]}] is empty after the margin"
            )
        j = float(limits.j_max[i])
        jm.append(j if (j > 0 and math.isfinite(j)) else 2.0 * am[i] / dt)
    return lo, hi, vm, am, jm


__all__ = ["GLOBAL_KINDS", "JOINT_KINDS", "BatchCore", "SafetyFilter"]
