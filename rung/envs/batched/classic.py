"""Gymnasium's classic-control tasks as batched tensor dynamics.

The equations, constants, integrators, bounds, resets, rewards and time limits are gymnasium's
(gymnasium/envs/classic_control, v1.x), so that from the same state and the same actions these
envs and gymnasium's agree to 1e-5 in float64 (tests/test_batched_envs.py checks each against
gymnasium itself). Every physical constant is a per-env tensor in `p`, so domain randomisation
can vary it per env.
"""

from __future__ import annotations

import math

import torch

from rung.envs.batched.base import BatchedEnv


class CartPole(BatchedEnv):
    name, obs_dim, state_dim, discrete, action_dim, max_episode_steps = "CartPole-v1", 4, 4, True, 2, 500
    # pole_length is half the pole's length, as gymnasium's `length`.
    PARAMS = {"gravity": 9.8, "cart_mass": 1.0, "pole_mass": 0.1, "pole_length": 0.5, "force_mag": 10.0}
    TAU = 0.02
    X_THRESHOLD = 2.4
    THETA_THRESHOLD = 12 * 2 * math.pi / 360
    _bounds_t: torch.Tensor | None = None
    _derived_cache: tuple | None = None

    def initial_state(self, n):
        return self.uniform(n, -0.05, 0.05, 4)

    def dynamics(self, s, action, p):
        x_dot, theta, theta_dot = s[:, 1], s[:, 2], s[:, 3]
        total_mass, polemass_length, neg_force = self._derived(p)
        force = torch.where(action == 1, p["force_mag"], neg_force)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # x * x rather than x**2: the same bits (torch's pow special-cases 2 as a product) at half
        # the dispatch cost; likewise torch.rsub for `4/3 - x`, which skips Python's reflected-operator path.
        temp = (force + polemass_length * (theta_dot * theta_dot) * sin) / total_mass
        theta_acc = (p["gravity"] * sin - cos * temp) / (
            p["pole_length"] * torch.rsub(p["pole_mass"] * (cos * cos) / total_mass, 4.0 / 3.0))
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        # Explicit Euler, gymnasium's default integrator, on the four coordinates as one tensor:
        # the same products and sums as gymnasium's four lines, in a third of the operations
        # (each costs microseconds of dispatch at a few envs, which is all an evaluation steps).
        s = s + self.TAU * torch.stack([x_dot, x_acc, theta_dot, theta_acc], -1)
        terminated = (s.abs() > self._bounds(s)).any(-1)
        return s, torch.ones_like(theta), terminated

    def _derived(self, p):
        """Total mass, pole mass x half-length and the leftward force: functions of the parameters
        alone, so kept until a parameter tensor is replaced (a reset, a randomised episode start)
        rather than recomputed each step."""
        key = (p["pole_mass"], p["cart_mass"], p["pole_length"], p["force_mag"])
        cached = self._derived_cache
        if cached is not None and all(a is b for a, b in zip(cached[0], key)):
            return cached[1]
        out = (p["pole_mass"] + p["cart_mass"], p["pole_mass"] * p["pole_length"], -p["force_mag"])
        if not torch.compiler.is_compiling():  # a traced step must compute them in its graph
            self._derived_cache = (key, out)
        return out

    def _bounds(self, s):
        """|x| and |theta| beyond these end an episode; the velocities are unbounded."""
        b = self._bounds_t
        if b is None or b.dtype != s.dtype or b.device != s.device:
            b = self._bounds_t = torch.tensor([self.X_THRESHOLD, math.inf, self.THETA_THRESHOLD, math.inf],
                                              dtype=s.dtype, device=s.device)
        return b

    def observe(self, s):
        return s


class Acrobot(BatchedEnv):
    name, obs_dim, state_dim, discrete, action_dim, max_episode_steps = "Acrobot-v1", 6, 4, True, 3, 500
    PARAMS = {"link_length_1": 1.0, "link_mass_1": 1.0, "link_mass_2": 1.0, "link_com_pos_1": 0.5,
              "link_com_pos_2": 0.5, "link_moi": 1.0, "gravity": 9.8, "max_torque": 1.0}
    DT = 0.2
    MAX_VEL_1, MAX_VEL_2 = 4 * math.pi, 9 * math.pi

    def initial_state(self, n):
        return self.uniform(n, -0.1, 0.1, 4)

    def _dsdt(self, s, torque, p):
        """gymnasium's "book" equations of motion: (N, 4) -> (N, 4)."""
        m1, m2, l1 = p["link_mass_1"], p["link_mass_2"], p["link_length_1"]
        lc1, lc2, moi, g = p["link_com_pos_1"], p["link_com_pos_2"], p["link_moi"], p["gravity"]
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + moi + moi
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + moi
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
                - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2) + phi2)
        ddtheta2 = ((torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2)
                    / (m2 * lc2**2 + moi - d2**2 / d1))
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], -1)

    def dynamics(self, s, action, p):
        torque = (action.to(s.dtype) - 1.0) * p["max_torque"]
        # One classic Runge-Kutta step over dt, the torque held constant.
        dt = self.DT
        k1 = self._dsdt(s, torque, p)
        k2 = self._dsdt(s + dt / 2 * k1, torque, p)
        k3 = self._dsdt(s + dt / 2 * k2, torque, p)
        k4 = self._dsdt(s + dt * k3, torque, p)
        ns = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        theta1 = torch.remainder(ns[:, 0] + math.pi, 2 * math.pi) - math.pi
        theta2 = torch.remainder(ns[:, 1] + math.pi, 2 * math.pi) - math.pi
        ns = torch.stack([theta1, theta2, ns[:, 2].clamp(-self.MAX_VEL_1, self.MAX_VEL_1),
                          ns[:, 3].clamp(-self.MAX_VEL_2, self.MAX_VEL_2)], -1)
        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        return ns, torch.where(terminated, 0.0, -1.0).to(s.dtype), terminated

    def observe(self, s):
        return torch.stack([torch.cos(s[:, 0]), torch.sin(s[:, 0]), torch.cos(s[:, 1]), torch.sin(s[:, 1]),
                            s[:, 2], s[:, 3]], -1)


class MountainCar(BatchedEnv):
    name, obs_dim, state_dim, discrete, action_dim, max_episode_steps = "MountainCar-v0", 2, 2, True, 3, 200
    PARAMS = {"force": 0.001, "gravity": 0.0025}
    MIN_POSITION, MAX_POSITION, MAX_SPEED, GOAL_POSITION = -1.2, 0.6, 0.07, 0.5

    def initial_state(self, n):
        return torch.cat([self.uniform(n, -0.6, -0.4, 1), torch.zeros(n, 1, dtype=self.dtype, device=self.device)], -1)

    def dynamics(self, s, action, p):
        position, velocity = s.unbind(-1)
        velocity = velocity + (action.to(s.dtype) - 1) * p["force"] + torch.cos(3 * position) * (-p["gravity"])
        velocity = velocity.clamp(-self.MAX_SPEED, self.MAX_SPEED)
        position = (position + velocity).clamp(self.MIN_POSITION, self.MAX_POSITION)
        velocity = torch.where((position == self.MIN_POSITION) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        return torch.stack([position, velocity], -1), torch.full_like(position, -1.0), terminated

    def observe(self, s):
        return s


class MountainCarContinuous(BatchedEnv):
    name, obs_dim, state_dim, discrete, action_dim, max_episode_steps = "MountainCarContinuous-v0", 2, 2, False, 1, 999
    PARAMS = {"power": 0.0015, "gravity": 0.0025}
    MIN_POSITION, MAX_POSITION, MAX_SPEED, GOAL_POSITION = -1.2, 0.6, 0.07, 0.45
    action_low, action_high = -1.0, 1.0

    initial_state = MountainCar.initial_state
    observe = MountainCar.observe

    def dynamics(self, s, action, p):
        position, velocity = s.unbind(-1)
        force = action[:, 0].to(s.dtype).clamp(self.action_low, self.action_high)
        velocity = (velocity + force * p["power"] - p["gravity"] * torch.cos(3 * position)).clamp(-self.MAX_SPEED, self.MAX_SPEED)
        position = (position + velocity).clamp(self.MIN_POSITION, self.MAX_POSITION)
        velocity = torch.where((position == self.MIN_POSITION) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= 0)
        reward = torch.where(terminated, 100.0, 0.0).to(s.dtype) - force**2 * 0.1
        return torch.stack([position, velocity], -1), reward, terminated


class Pendulum(BatchedEnv):
    name, obs_dim, state_dim, discrete, action_dim, max_episode_steps = "Pendulum-v1", 3, 2, False, 1, 200
    PARAMS = {"gravity": 10.0, "mass": 1.0, "length": 1.0, "max_torque": 2.0}
    DT, MAX_SPEED = 0.05, 8.0
    action_low, action_high = -2.0, 2.0
    action_cap = "max_torque"

    def initial_state(self, n):
        return torch.cat([self.uniform(n, -math.pi, math.pi, 1), self.uniform(n, -1.0, 1.0, 1)], -1)

    def dynamics(self, s, action, p):
        th, thdot = s.unbind(-1)
        u = torch.maximum(torch.minimum(action[:, 0].to(s.dtype), p["max_torque"]), -p["max_torque"])
        angle = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = angle**2 + 0.1 * thdot**2 + 0.001 * u**2
        g, m, length = p["gravity"], p["mass"], p["length"]
        thdot = (thdot + (3 * g / (2 * length) * torch.sin(th) + 3.0 / (m * length**2) * u) * self.DT).clamp(-self.MAX_SPEED, self.MAX_SPEED)
        th = th + thdot * self.DT
        return torch.stack([th, thdot], -1), -costs, torch.zeros_like(th, dtype=torch.bool)

    def observe(self, s):
        return torch.stack([torch.cos(s[:, 0]), torch.sin(s[:, 0]), s[:, 1]], -1)
