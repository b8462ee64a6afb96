"""GPU check: resnet34 on 224-pixel synthetic images with random augmentations on the device.

Two runs with ReproducibleCallback must be bit-identical (every state_dict tensor, torch.equal) and their batch
records equal row for row; two runs without it must differ. Then the overhead: the same fit with and without the
callback (recording every batch), interleaved, median ratio. On a machine without a GPU it runs a smaller workload
on the CPU (64 pixels, fewer images), so the script itself is tested everywhere.

    python bench/gpu_check.py [--pairs 5] [--out DIR]
"""
import argparse, json, os, platform, statistics, time, warnings
import torch
import fastai.callback.schedule  # noqa: F401  (fit_one_cycle)
from fastai.data.core import DataLoaders, TfmdDL
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory, TensorImage
from fastai.vision.augment import aug_transforms
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet34
from fastai_repro.all import ReproducibleCallback, weights_equal

def synthetic(n, size, seed):
    "Random images and labels from a private generator: the global generators are not touched"
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [(TensorImage(x[i]), TensorCategory(y[i])) for i in range(n)]

def make_dls(n, size, bs, device):
    return DataLoaders(TfmdDL(synthetic(n, size, 0), bs=bs, shuffle=True, after_batch=aug_transforms(), device=device),
                       TfmdDL(synthetic(n // 4, size, 1), bs=bs, device=device), device=device)

def run(cfg, callback):
    "One fit_one_cycle(1); returns the learner and the seconds it took"
    cbs = [ReproducibleCallback(21)] if callback else []
    dls = make_dls(cfg['n'], cfg['size'], cfg['bs'], cfg['device'])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = vision_learner(dls, resnet34, pretrained=False, n_out=2, normalize=False,
                               loss_func=CrossEntropyLossFlat(), cbs=cbs)
        with learn.no_bar(), learn.no_logging():
            if cfg['device'] == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter(); learn.fit_one_cycle(1)
            if cfg['device'] == 'cuda': torch.cuda.synchronize()
    return learn, time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pairs', type=int, default=5)
    ap.add_argument('--out', default=os.environ.get('OUT'))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    cfg = dict(device='cuda' if cuda else 'cpu', n=512 if cuda else 64, size=224 if cuda else 64, bs=64 if cuda else 16)
    res = dict(cfg, machine=torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
               torch=torch.__version__)
    (a, _), (b, _) = run(cfg, True), run(cfg, True)
    (c, _), (d, _) = run(cfg, False), run(cfg, False)
    res['with_callback_bit_identical'] = weights_equal(a.model, b.model)
    res['with_callback_records_equal'] = a.reproducible.record.batches.equals(b.reproducible.record.batches)
    res['without_callback_differ'] = not weights_equal(c.model, d.model)
    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 else (False, True)
        t = {cb: run(cfg, cb)[1] for cb in order}
        ratios.append(t[True] / t[False])
    res['overhead_ratios'] = ratios
    res['overhead_median_ratio'] = statistics.median(ratios)
    print(json.dumps(res, indent=1))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f: json.dump(res, f, indent=1)
    ok = res['with_callback_bit_identical'] and res['with_callback_records_equal'] and res['without_callback_differ']
    return 0 if ok else 1

if __name__ == '__main__': raise SystemExit(main())
