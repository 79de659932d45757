"""clstm in one screen: train an LSTM to continue a noisy sine wave, check it against
PyTorch when PyTorch is installed, and time a training step.

    python examples/quickstart.py
"""
import time

import numpy as np

import clstm


def sine_batches(rng, batch, steps):
    """Sine waves of random phase and frequency with a little noise: (T, B, 1) inputs
    and the next value as the target."""
    phase = rng.uniform(0, 2 * np.pi, size=(1, batch, 1))
    freq = rng.uniform(0.05, 0.15, size=(1, batch, 1))
    t = np.arange(steps + 1, dtype=np.float64)[:, None, None]
    wave = np.sin(phase + freq * t) + 0.02 * rng.standard_normal((steps + 1, batch, 1))
    return wave[:-1].astype(np.float32), wave[1:].astype(np.float32)


def train(seed=0):
    rng = np.random.default_rng(seed)
    lstm = clstm.LSTM(1, 32, seed=seed)
    head = clstm.Dense(32, 1, seed=seed)
    optimizer = clstm.Adam({**lstm.params, **{"head." + k: v for k, v in head.params.items()}},
                           {**lstm.grads, **{"head." + k: v for k, v in head.grads.items()}},
                           lr=1e-2)
    print("training LSTM(1, 32) + Dense(32, 1) to predict the next value of a sine wave")
    for step in range(1, 301):
        x, target = sine_batches(rng, batch=32, steps=50)
        lstm.zero_grad()
        head.zero_grad()
        y, _ = lstm.forward(x)
        prediction = head.forward(y)
        loss, dprediction = clstm.mse(prediction, target)
        lstm.backward(head.backward(dprediction), input_grad=False)
        optimizer.step()
        if step % 50 == 0:
            print(f"  step {step:3d}  mse {loss:.5f}")
    x, target = sine_batches(rng, batch=256, steps=50)
    y, _ = lstm.eval().forward(x)
    rmse = float(np.sqrt(np.mean((head.forward(y) - target)[10:] ** 2)))
    persistence = float(np.sqrt(np.mean((x - target)[10:] ** 2)))
    print(f"held-out RMSE {rmse:.4f}  (repeating the last value: {persistence:.4f})")


def compare_with_torch():
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: skipping the comparison with torch.nn.LSTM")
        return
    torch.manual_seed(0)
    module = torch.nn.LSTM(16, 24, num_layers=2, dtype=torch.float64)
    net = clstm.LSTM.from_torch(module)
    x = np.random.default_rng(1).standard_normal((20, 5, 16))
    y, (h, c) = net.forward(x)
    y_torch, _ = module(torch.from_numpy(x))
    y_torch.sum().backward()
    net.backward(np.ones_like(y))
    grad_error = max(float(np.abs(net.grads[n] - p.grad.numpy()).max())
                     for n, p in module.named_parameters())
    print(f"against torch.nn.LSTM (2 layers, float64): max |Δy| = "
          f"{np.abs(y - y_torch.detach().numpy()).max():.1e}, max |Δgrad| = {grad_error:.1e}")


def time_training_step():
    T, B, I, H = 100, 32, 256, 256
    net = clstm.LSTM(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), dtype=np.float32)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        net.zero_grad()
        net.forward(x)
        net.backward(dy, input_grad=False)
        times.append(time.perf_counter() - start)
    flops = 3 * 2 * T * B * (I + H) * 4 * H
    best = float(np.median(times))
    print(f"training step T={T} B={B} I={I} H={H} float32 on {clstm.get_num_threads()} "
          f"thread(s): {best * 1e3:.1f} ms median, {flops / best / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    train()
    compare_with_torch()
    time_training_step()
