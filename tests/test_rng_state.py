"""RNG snapshots are plain data: they survive JSON and restore every generator exactly."""

import json
import random

import numpy as np
import torch

from gvu import checkpoint


def test_rng_states_round_trip_through_json_and_replay_the_same_draws():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state, which must come back too
    saved = json.loads(json.dumps(checkpoint.rng_states()))
    first = (random.random(), np.random.randn(), np.random.randn(), torch.rand(3).tolist())
    checkpoint.set_rng_states(saved)
    assert (random.random(), np.random.randn(), np.random.randn(), torch.rand(3).tolist()) == first


def test_a_data_rng_state_round_trips_through_json():
    rng = random.Random(7)
    rng.random()
    saved = json.loads(json.dumps(checkpoint.python_rng_state(rng)))
    expected = [rng.random() for _ in range(3)]
    other = random.Random(0)
    other.setstate(checkpoint.python_rng_tuple(saved))
    assert [other.random() for _ in range(3)] == expected
