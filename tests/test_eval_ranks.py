"""Sampling shared over ranks (gvu.evaluate.sample_over_ranks, the training grid): each rank samples rows by stride,
and the gathered tokens are the one-process tokens in row order. The 2-process run is in tests/test_train_dist.py."""

import torch

import gvu.dist
from gvu.config import SamplingConfig
from gvu.evaluate import sample_over_ranks

PROMPTS = ["p0", "p1", "p2", "p3", "p4"]


class RowIdBackend:
    """Samples token j of row i as 10 * i + j (a pure function of the row id, as gvu's sampling is) and records calls."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def sample_image_tokens(self, prompts, sampling, row_ids=None):
        ids = torch.arange(len(prompts)) if row_ids is None else torch.as_tensor(row_ids)
        self.calls.append((list(prompts), ids.tolist()))
        return ids[:, None] * 10 + torch.arange(3)


def test_one_process_samples_every_row_in_one_call_as_before():
    b = RowIdBackend()
    tokens = sample_over_ranks(b, PROMPTS, SamplingConfig())
    assert b.calls == [(PROMPTS, [0, 1, 2, 3, 4])]
    assert tokens[:, 0].tolist() == [0, 10, 20, 30, 40]


def test_two_ranks_sample_rows_by_stride_and_gather_them_in_row_order(monkeypatch):
    ranks = [RowIdBackend(), RowIdBackend()]
    shares = []
    for r, b in enumerate(ranks):  # what each rank sends: its row ids and its tokens
        ids = torch.arange(len(PROMPTS))[r::2]
        shares.append((ids, b.sample_image_tokens([PROMPTS[i] for i in ids], None, ids)))
    monkeypatch.setattr(gvu.dist, "all_gather_objects", lambda obj: shares)
    b0 = RowIdBackend()
    tokens = sample_over_ranks(b0, PROMPTS, SamplingConfig(), rank=0, world=2)
    assert b0.calls == [(["p0", "p2", "p4"], [0, 2, 4])]  # rank 0 sampled its 3 rows only
    assert torch.equal(tokens, RowIdBackend().sample_image_tokens(PROMPTS, None))


def test_a_rank_without_rows_samples_nothing_and_still_gets_every_row(monkeypatch):
    b = RowIdBackend()
    share = (torch.arange(1), b.sample_image_tokens(["p0"], None, torch.arange(1)))
    monkeypatch.setattr(gvu.dist, "all_gather_objects", lambda obj: [share, obj])
    idle = RowIdBackend()
    tokens = sample_over_ranks(idle, ["p0"], SamplingConfig(), rank=1, world=2)
    assert idle.calls == [] and tokens.tolist() == [[0, 1, 2]]
