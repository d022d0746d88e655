"""On a GPU host (NVML, CUDA torch): the gateway in front of an upstream that does one second
of real GPU work per request, with ``energy.measure: nvml``. Prints what each request was
billed against the GPU's own energy counter; then the counter check on its own: two
concurrent requests sharing the GPU during 3 s of matmuls, attributed by the gateway's
FairShare over NVML's energy counter, as average watts against NVML's instantaneous power
readings taken meanwhile. Run from the repository root:

    python bench/gpu_energy.py

(figures in README.md, "Energy"; no GPU on the CI machines, so this is not a test)."""

import asyncio
import concurrent.futures as cf
import os
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.getcwd())

import httpx
import pynvml
import torch
import uvicorn
from aiohttp import web
from provenance import header

A = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

def gpu_work(seconds):
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(10):
            A @ A
        torch.cuda.synchronize()

async def chat(request):
    body = await request.json()
    await asyncio.get_running_loop().run_in_executor(None, gpu_work, 1.0)
    return web.json_response({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

async def models(request):
    return web.json_response({"object": "list", "data": []})

def upstream():
    app = web.Application(); app.router.add_post("/v1/chat/completions", chat); app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=18101, print=None, handle_signals=False)

threading.Thread(target=upstream, daemon=True).start()
from gateway.config import load_settings
from gateway.http.app import create_app

tmp = tempfile.mkdtemp()
settings = load_settings(None, backends=[{"name": "gpu", "plugin": "openai_compatible", "base_url": "http://127.0.0.1:18101/v1",
    "model": "m", "energy": {"measure": "nvml", "watts_busy": 1.0, "grid_g_per_kwh": 350}}],
    routes=[{"name": "auto", "backends": ["gpu"]}], ledger={"path": tmp + "/l.sqlite3"})
import plugins.openai_compatible
import plugins.state_memory
import policies.first_healthy

app = create_app(settings, load_entry_points=False,
                 extra_plugins=[plugins.openai_compatible, plugins.state_memory, policies.first_healthy])
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=18102, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started: time.sleep(0.1)
time.sleep(1)
pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0)
print(header())
print("gpu:", pynvml.nvmlDeviceGetName(h))
body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
def one():
    return httpx.post("http://127.0.0.1:18102/v1/chat/completions", json=body, timeout=60)
e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000
r = one(); e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000
print(f"one request: billed {r.headers['x-switchyard-energy-joules']} J, co2 {r.headers['x-switchyard-co2-grams']} g, "
      f"latency {r.headers['x-switchyard-latency-ms']} ms; GPU counter moved {e1 - e0:.1f} J over the call")
# two concurrent requests: they share the GPU (work serialises in the executor); the split should add up
e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000
with cf.ThreadPoolExecutor(2) as ex:
    rs = list(ex.map(lambda _: one(), range(2)))
e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000
billed = [float(x.headers["x-switchyard-energy-joules"]) for x in rs]
print(f"two concurrent: billed {billed[0]:.1f} J + {billed[1]:.1f} J = {sum(billed):.1f} J; GPU counter moved {e1 - e0:.1f} J")
time.sleep(0.5)
conn = sqlite3.connect(tmp + "/l.sqlite3")
print("ledger:", conn.execute("select energy_source, round(energy_j,1) from requests").fetchall())

# the counter on its own: two requests active together during 3 s of matmuls, split by the
# gateway's FairShare over NVML's energy counter; average watts against NVML's power readings
from gateway.energy import FairShare, NvmlCounter

fs = FairShare(NvmlCounter(0).joules)
watts = []
sampling = threading.Event()

def sample_power():
    while not sampling.wait(0.25):
        watts.append(pynvml.nvmlDeviceGetPowerUsage(h) / 1000)

sampler = threading.Thread(target=sample_power, daemon=True)
sampler.start()
a, b = fs.start(), fs.start()
t0 = time.perf_counter()
gpu_work(3.0)
ja, jb = fs.stop(a), fs.stop(b)
dt = time.perf_counter() - t0
sampling.set()
sampler.join()
watts = sorted(watts) or [pynvml.nvmlDeviceGetPowerUsage(h) / 1000]
print(f"counter check: two concurrent requests during {dt:.2f} s of matmuls were attributed "
      f"{ja:,.0f} J and {jb:,.0f} J, {(ja + jb) / dt:,.0f} W on average; NVML's instantaneous "
      f"power meanwhile: median {watts[len(watts) // 2]:,.0f} W "
      f"({len(watts)} readings, {watts[0]:,.0f} to {watts[-1]:,.0f} W)")
server.should_exit = True
