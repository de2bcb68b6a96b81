"""DDP and FSDP2 (gloo, CPU, 2 processes) on a masked seqdsl model: one SGD step
equals the same step on the whole batch in one process.

    python tests/torch_scale_job.py ddp|fsdp2 PORT

Run by tests/test_torch_scale.py in a subprocess (torch.distributed wants a fresh
process and spawns its workers from this file); docs/scale.md shows the same code.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SOURCE = """
model Tagger {
    input frames: f32[B, T, 6] pad(post, value=0.0) masked
    h = frames -> Bidirectional(LSTM(5, return_sequences=true)) -> GRU(4, return_sequences=true)
    tags = h -> TimeDistributed(Dense(3))
    output tags with mask
}
"""
B, T = 8, 7


def data():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(B, T, 6)), dtype=torch.float32)
    lengths = torch.tensor(rng.integers(0, T + 1, size=B))
    target = torch.tensor(rng.normal(size=(B, T, 3)), dtype=torch.float32)
    return x, lengths, target


def masked_loss(net, x, lengths, target):
    tags, mask = net(x, lengths={"frames": lengths})
    err = (tags - target).square().sum(-1) * mask
    return err.sum() / (B * T)  # the same normaliser on every rank: the shares add up


def step(net, x, lengths, target):
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = masked_loss(net, x, lengths, target)
    loss.backward()
    opt.step()
    return loss


def worker(rank, world, port, kind, queue):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import seqdsl

    net = seqdsl.loads(SOURCE).build("torch", seed=0).train()
    x, lengths, target = data()
    rows = slice(rank * B // world, (rank + 1) * B // world)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net)
        # DDP averages the ranks' gradients: scale each rank's share back to a sum
        loss = world * masked_loss(model, x[rows], lengths[rows], target[rows])
        loss.backward()
        torch.optim.SGD(net.parameters(), lr=0.5).step()
        weights = net.canonical_weights()
    else:  # fsdp2
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in net.children():
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        loss = world * masked_loss(net, x[rows], lengths[rows], target[rows])
        loss.backward()
        torch.optim.SGD(net.parameters(), lr=0.5).step()
        full = {k: v.full_tensor() for k, v in net.state_dict().items()}
        weights = {c: full[s].detach().numpy() for c, s in net.WEIGHTS.items()}
    if rank == 0:
        queue.put({k: np.asarray(v) for k, v in weights.items()})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    assert kind in ("ddp", "fsdp2"), kind
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, port, kind, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = queue.get(timeout=300)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, p.exitcode
    import seqdsl

    net = seqdsl.loads(SOURCE).build("torch", seed=0).train()
    before = {k: v.copy() for k, v in net.canonical_weights().items()}
    step(net, *data())
    want = net.canonical_weights()
    moved = max(float(np.abs(want[k] - before[k]).max()) for k in want)
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    print(f"{kind}: max diff {diff:.2e}, weights moved {moved:.2e}")
    assert moved > 1e-3 and diff < 1e-5, (diff, moved)
    print("OK")
