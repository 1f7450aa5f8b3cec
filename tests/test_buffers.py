import io

import pytest
import torch

from rung.buffers import ReplayBuffer
from rung.errors import UserError


def _fill(buf: ReplayBuffer, steps: int, start: int = 0) -> None:
    """Step t of env c stores obs t*10+c in every field, so a sample says where it came from."""
    n = buf.num_envs
    for t in range(start, start + steps):
        tag = torch.arange(n, dtype=torch.float32) + 10 * t
        obs = {k: tag[:, None].expand(n, v.shape[-1]).clone() for k, v in buf.obs.items()} if isinstance(buf.obs, dict) \
            else tag[:, None].expand(n, buf.obs.shape[-1]).clone()
        nxt = {k: v + 1000 for k, v in obs.items()} if isinstance(obs, dict) else obs + 1000
        actions = tag.long() if buf.discrete else tag[:, None].expand(n, buf.actions.shape[-1]).clone()
        buf.add(obs, actions, tag, nxt, (tag % 3 == 0).float())


def test_wrap_around_overwrites_the_oldest_rows():
    buf = ReplayBuffer(7, 2, (1,), (), True, check_memory=False)  # rounded down to 3 rows of 2 envs
    assert buf.rows == 3 and len(buf) == 0
    _fill(buf, 2)
    assert len(buf) == 4 and buf.pos == 2 and not buf.full
    _fill(buf, 3, start=2)
    assert len(buf) == 6 and buf.pos == 2 and buf.full
    # Steps 3 and 4 overwrote rows 0 and 1; row 2 still holds step 2.
    assert buf.obs[:, 0, 0].tolist() == [30.0, 40.0, 20.0]
    assert buf.obs[:, 1, 0].tolist() == [31.0, 41.0, 21.0]
    stored = set(buf.sample(200).rewards.tolist())
    assert stored == {20.0, 21.0, 30.0, 31.0, 40.0, 41.0}


def test_capacity_below_num_envs_is_refused():
    with pytest.raises(UserError, match="--buffer-size 2 is smaller than --num-envs 4"):
        ReplayBuffer(2, 4, (1,), (), True, check_memory=False)


def test_dict_observations_round_trip():
    buf = ReplayBuffer(40, 2, {"a": (2,), "b": (3,)}, (), True, check_memory=False)
    _fill(buf, 10)
    batch = buf.sample(64)
    assert set(batch.obs) == {"a", "b"} and batch.obs["a"].shape == (64, 2) and batch.obs["b"].shape == (64, 3)
    tag = batch.actions.float()
    for k in ("a", "b"):
        assert torch.equal(batch.obs[k], tag[:, None].expand_as(batch.obs[k]))
        assert torch.equal(batch.next_obs[k], batch.obs[k] + 1000)
    assert torch.equal(batch.rewards, tag)


@pytest.mark.parametrize("discrete", [True, False])
def test_sampled_shapes(discrete):
    buf = ReplayBuffer(100, 4, (5,), () if discrete else (2,), discrete, check_memory=False)
    _fill(buf, 8)
    b = buf.sample(32)
    assert b.obs.shape == b.next_obs.shape == (32, 5)
    assert b.actions.shape == ((32,) if discrete else (32, 2))
    assert b.actions.dtype == (torch.int64 if discrete else torch.float32)
    assert b.rewards.shape == b.terminated.shape == (32,) and b.terminated.dtype == torch.float32
    assert torch.equal(b.terminated, (b.rewards % 3 == 0).float())


def test_seeded_sampling_is_reproducible_and_resumes_from_state_dict():
    def make():
        buf = ReplayBuffer(30, 3, {"a": (2,)}, (1,), False, seed=7, check_memory=False)
        _fill(buf, 6)
        return buf

    a, b = make(), make()
    assert torch.equal(a.sample(16).rewards, b.sample(16).rewards)
    assert not torch.equal(a.sample(16).rewards, make().sample(16).rewards)

    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    expected = [a.sample(16).rewards for _ in range(3)]
    _fill(a, 8, start=6)  # wraps past the end
    expected.append(a.sample(16).obs["a"])

    restored = ReplayBuffer(30, 3, {"a": (2,)}, (1,), False, seed=0, check_memory=False)
    blob.seek(0)
    restored.load_state_dict(torch.load(blob))
    got = [restored.sample(16).rewards for _ in range(3)]
    _fill(restored, 8, start=6)
    got.append(restored.sample(16).obs["a"])
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_loading_a_differently_shaped_buffer_names_the_flags():
    small = ReplayBuffer(10, 2, (3,), (), True, check_memory=False)
    _fill(small, 2)
    other = ReplayBuffer(10, 2, (4,), (), True, check_memory=False)
    with pytest.raises(UserError, match="--buffer-size and --num-envs"):
        other.load_state_dict(small.state_dict())


def test_buffer_that_would_not_fit_in_memory_is_refused(monkeypatch):
    monkeypatch.setattr("rung.buffers.replay.available_bytes", lambda: 1 << 20)
    with pytest.raises(UserError, match="lower --buffer-size") as err:
        ReplayBuffer(1_000_000, 1, (17,), (6,), False)
    assert "\n" not in str(err.value)
    ReplayBuffer(1_000, 1, (17,), (6,), False)  # small enough: accepted


def test_a_wrapped_buffer_resumes_only_at_its_own_size():
    small = ReplayBuffer(4, 1, (3,), (), True, check_memory=False)
    _fill(small, 6)  # wrapped: every row holds data
    with pytest.raises(UserError, match="--buffer-size"):
        ReplayBuffer(8, 1, (3,), (), True, check_memory=False).load_state_dict(small.state_dict())
    young = ReplayBuffer(4, 1, (3,), (), True, check_memory=False)
    _fill(young, 3)  # not wrapped: a larger buffer goes on filling after it
    larger = ReplayBuffer(8, 1, (3,), (), True, check_memory=False)
    larger.load_state_dict(young.state_dict())
    assert len(larger) == 3
    exact = ReplayBuffer(3, 1, (3,), (), True, check_memory=False)  # as large as what it held: full
    exact.load_state_dict(young.state_dict())
    _fill(exact, 1, start=3)  # overwrites the oldest row rather than writing past the end
    assert len(exact) == 3 and exact.obs[0, 0, 0] == 30


@pytest.mark.parametrize("discrete, action_shape", [(True, ()), (False, (6,))])
def test_the_memory_stated_is_what_the_buffer_allocates(discrete, action_shape):
    from rung.buffers import HerReplayBuffer

    buf = ReplayBuffer(100, 2, {"a": (5,), "b": (3,)}, action_shape, discrete, check_memory=False)
    assert buf.nbytes == sum(t.nbytes for t in (*buf.obs.values(), *buf.next_obs.values(), buf.actions, buf.rewards,
                                                  buf.terminated))
    parts = {"observation": slice(0, 2), "achieved_goal": slice(2, 5), "desired_goal": slice(5, 8)}
    her = HerReplayBuffer(100, 2, parts, 8, action_shape, lambda a, d: a.sum(-1), discrete=discrete, check_memory=False)
    assert her.nbytes == buf.nbytes + her.ep_start.nbytes + her.ep_len.nbytes
