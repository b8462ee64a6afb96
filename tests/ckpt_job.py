"""One process of the mid-epoch resume tests (issue 14): `main(mode, folder, method, workers, kill_at)`, or
`python ckpt_job.py MODE FOLDER METHOD WORKERS` for a new interpreter.

METHOD is the fit call, of 2 epochs: `fine_tune` (two fits: 1 frozen epoch, then 2), `fit_one_cycle`, `fit_flat_cos`
or `fit`. MODE is `full` (the whole run, no checkpoint), `killed` (a checkpoint every 2 training batches into
FOLDER/ck; the process kills itself with SIGKILL as training batch `kill_at`, (fit, epoch, batch), begins) or
`resume` (`resume_from=FOLDER/ck`, then to the end). WORKERS: the loaders' `num_workers`. `full` and `resume` write
FOLDER/MODE.pth: the final weights, the Recorder's values and the record. The digits are in FOLDER/../digits16."""
import multiprocessing, os, signal, sys, warnings
from pathlib import Path
import torch
import fastai.callback.schedule  # noqa: F401
from fastai.callback.core import Callback
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, digits_dls

class KillAt(Callback):
    "Kills this process with SIGKILL as training batch `KillAt.at` (fit, epoch, batch) begins: a switch, not a setting"
    at = None
    def before_fit(self): self.fit_no = getattr(self, 'fit_no', -1) + 1
    def before_batch(self):
        if self.training and (self.fit_no, self.epoch, self.iter) == KillAt.at: os.kill(os.getpid(), signal.SIGKILL)

def main(mode:str, folder, method:str, workers:int=0, kill_at:tuple|None=None):
    "One run of `method` in the `mode` the module's docstring describes"
    folder, KillAt.at = Path(folder), kill_at
    if workers: multiprocessing.set_start_method('fork', force=True) # as a script on Linux; the server set its own
    dls = digits_dls(folder.parent/'digits16', seed=21, size=16, bs=32, num_workers=workers)
    kw = dict(checkpoint_every=2, checkpoint_dir=folder/'ck') if mode == 'killed' else {}
    if mode == 'resume': kw = dict(resume_from=folder/'ck')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = vision_learner(dls, resnet18, pretrained=False, path=folder,
                               cbs=[ReproducibleCallback(21, compare_previous=False, **kw), KillAt()])
    with learn.no_bar(), learn.no_logging(): getattr(learn, method)(2)
    torch.save(dict(weights=learn.model.state_dict(), values=[list(map(float, v)) for v in learn.recorder.values],
                    record=learn.reproducible.record.to_bytes()), folder/f'{mode}.pth')

if __name__ == '__main__': # through the module, so that its callback is `ckpt_job.KillAt` as in the forked jobs
    import ckpt_job
    ckpt_job.main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
