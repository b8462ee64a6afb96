"""Cost of portable CPU kernels (issue 22): the same fit in portable mode (the AVX2 baseline) and natively.

The mode of the CPU kernels is fixed when a process first runs them, so each run is a new process. Runs alternate
portable and native, the order swapped each round; each run times one `fit` of `vision_learner(resnet18,
pretrained=False)` with `ReproducibleCallback(21)` on the digits at 32 px (480 images unless `--n`), oneDNN's first
compilation of its kernels included. Prints each pair and the median of the per-round ratios portable / native, with the
CPU named.

    python bench/kernels.py [--rounds 5] [--n 480] [--epochs 1]
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from fastai_repro.determinism import PORTABLE_ENV as PORTABLE, cpu_isa

def one_fit(data:str, epochs:int) -> dict:
    "Time one fit in this process's kernels; its wall and CPU seconds, and the kernels that ran"
    import warnings
    from fastai.vision.learner import vision_learner
    from fastai.vision.models import resnet18
    from fastai_repro.all import ReproducibleCallback, digits_dls, kernel_facts
    dls = digits_dls(data, seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = vision_learner(dls, resnet18, pretrained=False, cbs=ReproducibleCallback(21))
    with learn.no_bar(), learn.no_logging():
        t, c = time.perf_counter(), time.process_time()
        learn.fit(epochs, 1e-3)
        return dict(wall=time.perf_counter() - t, cpu=time.process_time() - c, kernels=kernel_facts())

def run(data:str, portable:bool, epochs:int) -> dict:
    "One fit in a new process, in portable mode or natively"
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE}
    code = f'import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import kernels; ' \
           f'print(json.dumps(kernels.one_fit({data!r}, {epochs})))'
    out = subprocess.run([sys.executable, '-c', code], env={**env, **(PORTABLE if portable else {})},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])

def cpu_name() -> str:
    "The CPU's model name"
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def main():
    "Time the fits, alternating portable and native, and print the median ratio"
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=5); p.add_argument('--n', type=int, default=480)
    p.add_argument('--epochs', type=int, default=1)
    a = p.parse_args()
    from fastai_repro.all import make_digits_folder
    data = str(make_digits_folder(os.path.join(tempfile.mkdtemp(), 'digits'), n=a.n))
    print(f'CPU: {cpu_name()} ({cpu_isa()}), {os.cpu_count()} cores; {a.n} digits at 32 px, fit({a.epochs})')
    ratios = {'wall': [], 'cpu': []}
    for r in range(a.rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        res = {m: run(data, m, a.epochs) for m in order}
        for k in ratios: ratios[k].append(res[True][k] / res[False][k])
        print(f"round {r}: portable {res[True]['wall']:.2f} s ({res[True]['kernels']['onednn']}), "
              f"native {res[False]['wall']:.2f} s ({res[False]['kernels']['onednn']}); "
              f"ratio {ratios['wall'][-1]:.3f} wall, {ratios['cpu'][-1]:.3f} cpu")
    print(f"median ratio portable / native over {a.rounds} rounds: {statistics.median(ratios['wall']):.3f} wall, "
          f"{statistics.median(ratios['cpu']):.3f} cpu")

if __name__ == '__main__': main()
