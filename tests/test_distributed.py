"""DDP on 2 CPU processes (gloo) against one process holding the whole batch (`hicl.train.dist`).

Tiny stage networks without BatchNorm (a conv, global pooling, a linear projector), so that the only
coupling across the batch is the method's own: SimCLR's negatives, the Barlow Twins cross-correlation,
MoCo's queue. Each worker writes its results to a file; the test compares them with a single-process
run of the same code on the global batch.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from hicl.augment.hierarchy import StageViews
from hicl.manifest import OptimConfig
from hicl.methods import METHODS
from hicl.models.network import SSLModel
from hicl.errors import HiclError
from hicl.train.dist import (
    gather_objects, init_distributed, max_over_ranks, mean_over_ranks, on_main, rank_seed, shutdown, wrap_ddp,
)
from hicl.train.optim import build_optimizer

WORLD = 2
LOCAL_BATCH = 3
GATHERING = ["simclr", "barlow_twins"]  # objectives whose loss couples the whole batch
QUEUED = "moco_v2"


class TinyStages(nn.Module):
    """The StageNetwork interface with one stage: views -> conv -> ReLU -> pool -> linear projection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.proj = nn.Linear(5, 4)

    def forward(self, views, param_vectors, fused):
        return [self.proj(torch.relu(self.conv(views[0])).mean(dim=(2, 3)))]


def _model(name: str) -> SSLModel:
    torch.manual_seed(0)
    config = METHODS[name].Config
    small = {"proj_hidden_dim": 4, "proj_dim": 4, "queue_size": 16, "temperature": 0.5}
    cfg = config(**{k: v for k, v in small.items() if k in config.model_fields})
    return SSLModel(TinyStages(), METHODS[name](cfg, 1), fused=False, loss_weights=[1.0])


def _global_views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    n = WORLD * LOCAL_BATCH
    return torch.randn(n, 3, 6, 6, generator=g), torch.randn(n, 3, 6, 6, generator=g)


def _batch(view_a: torch.Tensor, view_b: torch.Tensor) -> StageViews:
    return StageViews(views=[torch.cat([view_a, view_b])], params=[{}], param_vectors=[None])


def _local(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]


def _loss_and_grads(model: nn.Module, module: SSLModel, batch: StageViews) -> tuple[torch.Tensor, dict]:
    loss = module.total_loss(model(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _train(model: nn.Module, module: SSLModel, rank: int | None, steps: int) -> list[float]:
    optimizer = build_optimizer(OptimConfig(name="sgd", lr=0.5, batch_size=256, weight_decay=1e-3), module, [])
    losses = []
    for step in range(steps):
        a, b = _global_views(step)
        if rank is not None:
            a, b = _local(a, rank), _local(b, rank)
        loss = module.total_loss(model(_batch(a, b)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.after_optimizer_step(step, steps)
        losses.append(float(mean_over_ranks(loss.detach())))
    return losses


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    env, device = init_distributed(torch.device("cpu"))
    results: dict = {"rank": env.rank}
    try:
        a, b = _global_views(0)
        for name in GATHERING:
            module = _model(name)
            loss, grads = _loss_and_grads(wrap_ddp(module, device), module, _batch(_local(a, rank), _local(b, rank)))
            results[name] = {"loss": mean_over_ranks(loss), "grads": grads}
        module = _model(GATHERING[0])
        results["train_losses"] = _train(wrap_ddp(module, device), module, rank, steps=3)
        results["params"] = {n: p.detach().clone() for n, p in module.named_parameters()}
        results["max_over_ranks"] = max_over_ranks(10 * rank + 1, device)
        results["gathered"] = gather_objects({"rank": rank})
        results["on_main"] = []
        for fails in (False, True):
            def action(fails: bool = fails) -> None:
                if fails:
                    raise HiclError("disk full")
            try:
                on_main(action)
                results["on_main"].append(None)
            except HiclError as exc:
                results["on_main"].append(str(exc))
        module = _model(QUEUED)
        wrap_ddp(module, device)(_batch(_local(a, rank), _local(b, rank)))
        results["queue"] = module.method.queues[0].clone()
        results["queue_ptr"] = int(module.method.queue_ptr[0])
    finally:
        shutdown()
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", GATHERING)
def test_two_ranks_equal_one_process_on_the_global_batch(ranks, name):
    module = _model(name)
    loss, grads = _loss_and_grads(module, module, _batch(*_global_views(0)))
    for result in ranks:
        got = result[name]
        assert torch.allclose(got["loss"], loss, rtol=1e-5, atol=1e-6), (name, got["loss"], loss)
        assert got["grads"].keys() == grads.keys() and len(grads) == 4
        for n, g in grads.items():
            assert g.abs().sum() > 0
            assert torch.allclose(got["grads"][n], g, rtol=1e-4, atol=1e-6), (name, n)


def test_parameters_stay_identical_across_ranks_and_follow_the_single_process_run(ranks):
    module = _model(GATHERING[0])
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    losses = _train(module, module, None, steps=3)
    for n, p in module.named_parameters():
        assert torch.equal(ranks[0]["params"][n], ranks[1]["params"][n]), n
        assert not torch.equal(ranks[0]["params"][n], initial[n]), n
        assert torch.allclose(ranks[0]["params"][n], p.detach(), rtol=1e-4, atol=1e-6), n
    assert ranks[0]["train_losses"] == pytest.approx(losses, rel=1e-4)


def test_moco_queue_holds_the_keys_of_both_ranks(ranks):
    module = _model(QUEUED)
    initial_queue = module.method.queues[0].clone()
    a, b = _global_views(0)
    with torch.no_grad():
        keys = []
        for r in range(WORLD):  # the gathered order: rank 0's [a; b] keys, then rank 1's
            (k,) = module.target([torch.cat([_local(a, r), _local(b, r)])], [None], False)
            keys.append(nn.functional.normalize(k, dim=1))
    expected = torch.cat(keys)
    n = expected.shape[0]
    assert n == 2 * WORLD * LOCAL_BATCH
    for result in ranks:
        assert result["queue_ptr"] == n
        assert torch.allclose(result["queue"][:n], expected, atol=1e-5)
        assert torch.equal(result["queue"][n:], initial_queue[n:])
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])


def test_small_collectives_agree_and_a_failure_on_rank_zero_stops_every_rank(ranks):
    for result in ranks:
        assert result["max_over_ranks"] == 11
        assert result["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert result["on_main"][0] is None
    assert ranks[0]["on_main"][1] == "disk full"  # rank 0 re-raises its own error
    assert "rank 0 failed" in ranks[1]["on_main"][1]  # the others learn of it instead of waiting


def test_rank_seeds_keep_rank_zero_and_differ_per_rank():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8
