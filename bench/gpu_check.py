"""GPU check: resnet34 on 224-pixel synthetic images with random augmentations on the device.

Three scenarios: `fp32`; `fp16` (fastai's `learn.to_fp16()`, mixed precision with a gradient scaler); `workers`
(`num_workers=2`, items made in worker processes). In each, two runs with ReproducibleCallback must be bit-identical
(every state_dict tensor, torch.equal) and their batch records equal row for row; two runs without it must differ.
Every warning the runs raise is kept and reported (`warnings` in the output), not silenced.
Then the overhead of the `fp32` fit with and without the callback (recording every batch), interleaved, median ratio.
Issue 14: `resume` (an `fp32` fit that crashes at training batch 5, with a checkpoint every 2 batches, goes on from
its last checkpoint in this process and must end bit-identical to the fit that never crashed, record included) and
the time to seed one batch from its key with every generator of the device started.
Issue 25: `resume_fp16` (the same with `to_fp16()`: the gradient scaler's state in the checkpoint); `strict`
(`ReproducibleCallback(21, strict=True)`, torch raising on any kernel without a deterministic implementation, with
`vision_learner`'s default head and with `unet_learner`: two runs each, whether they ran and were bit-identical, or
the error); `cublas_late` (what the callback's probe says after the runs); and every warning, as before.
Issue 27: `distributed`, on a machine with 2 GPUs or more: `tests/test_distributed_resume.py`'s SIGKILL resume under
torchrun on 2 GPUs with NCCL (rank 1 killed at a random training batch, resumed, every rank bit-identical to the run
never stopped, shared and per-rank streams) and `tests/test_world_size_resume.py` (1 and 2 GPUs, resumed from one to
the other with the global batch kept), run by pytest with `FASTAI_REPRO_TEST_GPU=1`; skipped, saying so, with fewer
GPUs.
On a machine without a GPU it runs a smaller workload on the CPU (64 pixels, fewer images), so the script itself is
tested everywhere; there fastai's `to_fp16` turns itself off (its autocast is for CUDA), which the output says.

    python bench/gpu_check.py [--pairs 5] [--n IMAGES] [--scenarios fp32 fp16 workers] [--out DIR]
"""
import argparse, json, os, platform, statistics, tempfile, time, timeit, warnings
import torch, fastai
import fastai.callback.schedule  # noqa: F401  (fit_one_cycle)
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders, TfmdDL
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory, TensorImage
from fastai.vision.augment import aug_transforms
from fastai.torch_core import TensorMask
from fastai.vision.learner import unet_learner, vision_learner
from fastai.vision.models import resnet18, resnet34
from fastai_repro.all import ReproducibleCallback, compare, weights_equal
from fastai_repro.determinism import cublas_late
from fastai_repro.seeding import batch_seed, model_generators, seed_batch

def synthetic(n, size, seed):
    "Random images and labels from a private generator: the global generators are not touched"
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [(TensorImage(x[i]), TensorCategory(y[i])) for i in range(n)]

def make_dls(n, size, bs, device, workers=0):
    return DataLoaders(TfmdDL(synthetic(n, size, 0), bs=bs, shuffle=True, after_batch=aug_transforms(), device=device,
                              num_workers=workers),
                       TfmdDL(synthetic(n // 4, size, 1), bs=bs, device=device, num_workers=workers), device=device)

SCENARIOS = {'fp32': dict(fp16=False, workers=0), 'fp16': dict(fp16=True, workers=0), 'workers': dict(fp16=False, workers=2)}

def run(cfg, callback, scenario='fp32', extra=(), **cb_kw):
    "One fit_one_cycle(1), with the callback (`cb_kw` its settings) and the callbacks `extra`; the learner, the seconds"
    sc = SCENARIOS[scenario]
    cbs = ([ReproducibleCallback(21, **cb_kw)] if callback else []) + list(extra)
    dls = make_dls(cfg['n'], cfg['size'], cfg['bs'], cfg['device'], sc['workers'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = vision_learner(dls, resnet34, pretrained=False, n_out=2, normalize=False,
                               loss_func=CrossEntropyLossFlat(), cbs=cbs)
        if sc['fp16']: learn.to_fp16()
        with learn.no_bar(), learn.no_logging():
            if cfg['device'] == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter(); learn.fit_one_cycle(1)
            if cfg['device'] == 'cuda': torch.cuda.synchronize()
        secs = time.perf_counter() - t
    for w in caught: WARNINGS.setdefault(f'{w.category.__name__}: {w.message}', f'{w.filename}:{w.lineno}')
    return learn, secs

WARNINGS = {}  # every warning the runs raised (message -> where), reported, not hidden

class Crash(Callback):
    "Raises as training batch 5 begins, while `Crash.on`: a switch, not a setting"
    on = False
    def before_batch(self):
        if Crash.on and self.training and self.iter == 5: raise RuntimeError('crashed at batch 5')

def resume_check(cfg, scenario='fp32') -> dict:
    "A fit that crashed at batch 5 goes on from its last checkpoint and ends as the fit that did not crash"
    full, _ = run(cfg, True, scenario, extra=[Crash()], compare_previous=False)
    folder = tempfile.mkdtemp()
    Crash.on = True
    try: run(cfg, True, scenario, extra=[Crash()], checkpoint_every=2, checkpoint_dir=folder)
    except RuntimeError as e: assert 'crashed at batch 5' in str(e)
    finally: Crash.on = False
    resumed, _ = run(cfg, True, scenario, extra=[Crash()], resume_from=folder)
    gens = model_generators()
    us = min(timeit.repeat(lambda: seed_batch(batch_seed(12345, 7), gens), number=2000, repeat=5)) / 2000 * 1e6
    return dict(resumed_bit_identical=weights_equal(full.model, resumed.model),
                resumed_records_same=compare(full.reproducible.record, resumed.reproducible.record).same,
                seed_batch_us=us, generators_seeded=len(gens))

def unet_run(cfg, **cb_kw):
    "One fit_one_cycle(1) of `unet_learner(resnet18)` on random images and two-class masks, with the callback"
    g = torch.Generator().manual_seed(2)
    n, size = cfg['n'] // 4, cfg['size']
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 2, (n, size, size), generator=g)
    items = [(TensorImage(x[i]), TensorMask(y[i])) for i in range(n)]
    dls = DataLoaders(TfmdDL(items, bs=cfg['bs'] // 2, shuffle=True, device=cfg['device']),
                      TfmdDL(items[:cfg['bs']], bs=cfg['bs'] // 2, device=cfg['device']), device=cfg['device'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = unet_learner(dls, resnet18, pretrained=False, n_out=2, normalize=False,
                             loss_func=CrossEntropyLossFlat(axis=1), cbs=ReproducibleCallback(21, **cb_kw))
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1)
    for w in caught: WARNINGS.setdefault(f'{w.category.__name__}: {w.message}', f'{w.filename}:{w.lineno}')
    return learn

def strict_check(cfg) -> dict:
    "`strict=True` with fastai's default vision head and with a U-Net: two runs each; ran, bit-identical, or the error"
    out = {}
    for name, fit in (('vision_learner', lambda: run(cfg, True, strict=True, compare_previous=False)[0]),
                      ('unet_learner', lambda: unet_run(cfg, strict=True, compare_previous=False))):
        try:
            a, b = fit(), fit()
            out[name] = dict(ran=True, bit_identical=weights_equal(a.model, b.model))
        except RuntimeError as e: out[name] = dict(ran=False, error=f'{type(e).__name__}: {e}'[:400])
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pairs', type=int, default=5)
    ap.add_argument('--scenarios', nargs='+', choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument('--n', type=int, help='training images (default 512 on a GPU, 64 on the CPU)')
    ap.add_argument('--out', default=os.environ.get('OUT'))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    cfg = dict(device='cuda' if cuda else 'cpu', n=512 if cuda else 64, size=224 if cuda else 64, bs=64 if cuda else 16)
    if args.n: cfg['n'] = args.n
    res = dict(cfg, machine=torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
               torch=torch.__version__, cuda=torch.version.cuda, fastai=fastai.__version__, python=platform.python_version())
    res['fp16_active'] = cuda # fastai's MixedPrecision uses autocast('cuda') and GradScaler('cuda')
    ok = True
    for name in args.scenarios:
        (a, _), (b, _) = run(cfg, True, name), run(cfg, True, name)
        (c, _), (d, _) = run(cfg, False, name), run(cfg, False, name)
        r = res[name] = dict(with_callback_bit_identical=weights_equal(a.model, b.model),
                             with_callback_records_equal=a.reproducible.record.batches.equals(b.reproducible.record.batches),
                             without_callback_differ=not weights_equal(c.model, d.model))
        ok = ok and all(r[k] for k in ('with_callback_bit_identical', 'with_callback_records_equal', 'without_callback_differ'))
        print(name, json.dumps(r), flush=True)
    for name, scenario in (('resume', 'fp32'), ('resume_fp16', 'fp16')):
        r = res[name] = resume_check(cfg, scenario)
        ok = ok and r['resumed_bit_identical'] and r['resumed_records_same']
        print(name, json.dumps(r), flush=True)
    res['strict'] = strict_check(cfg)
    print('strict', json.dumps(res['strict']), flush=True)
    res['cublas_late'] = cublas_late()
    res['distributed'] = distributed_check()
    ok = ok and res['distributed'].get('returncode', 0) == 0
    print('distributed', json.dumps(res['distributed']), flush=True)
    ratios, secs = [], []
    for i in range(args.pairs):
        order = (True, False) if i % 2 else (False, True)
        t = {cb: run(cfg, cb, 'fp32')[1] for cb in order}
        ratios.append(t[True] / t[False]); secs.append(dict(with_callback=t[True], without=t[False]))
    res['overhead_ratios'], res['overhead_seconds'] = ratios, secs
    res['overhead_median_ratio'] = statistics.median(ratios)
    res['warnings'] = WARNINGS
    print(json.dumps(res, indent=1))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f: json.dump(res, f, indent=1)
    return 0 if ok else 1

def distributed_check() -> dict:
    "Issue 27's distributed resume test on 2 GPUs with NCCL, by pytest; skipped with fewer GPUs"
    n = torch.cuda.device_count()
    if n < 2: return dict(skipped=f'{n} GPU(s) here: the distributed check needs 2 or more')
    import subprocess, sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/test_distributed_resume.py',
           'tests/test_world_size_resume.py']
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, 'FASTAI_REPRO_TEST_GPU': '1'})
    return dict(gpus=n, returncode=r.returncode, output_tail=(r.stdout + r.stderr)[-4000:])

if __name__ == '__main__': raise SystemExit(main())
