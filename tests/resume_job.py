"""One process of the exact-resume tests: `python resume_job.py MODE FOLDER CALLBACK`.

MODE is `full` (fit_one_cycle(3)), `first` (epoch 0 of fit_one_cycle(3), then learn.save('ck', with_opt=True)) or
`resume` (learn.load('ck', with_opt=True), then fit_one_cycle(3, start_epoch=1)); `ft_full`, `ft_first`, `ft_resume`
do the same for the second fit of fine_tune(2). CALLBACK is 1 (ReproducibleCallback(21)) or 0 (set_seed(21) only,
the usual advice). Writes FOLDER/MODE.pth with the final weights."""
import sys, warnings
from pathlib import Path
import torch
import fastai.callback.schedule  # noqa: F401
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import set_seed
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet18
from fastai_repro.all import ReproducibleCallback, digits_dls

class StopAfterEpoch0(Callback):
    "Ends the fit after its first epoch"
    def __init__(self, fit:int=0): self.fit_no, self.fits = fit, 0
    def after_epoch(self):
        if self.epoch == 0 and self.fits == self.fit_no: raise CancelFitException()
    def after_fit(self): self.fits += 1

def main(mode, folder, callback):
    "One run in the `mode` the module's docstring describes, with the callback or without"
    folder = Path(folder)
    ft, resume = mode.startswith('ft_'), mode.endswith('resume')
    if not callback: set_seed(21)
    dls = digits_dls(folder/'digits', seed=21, size=16, bs=32)
    cbs = [ReproducibleCallback(21, compare_previous=False, first_fit=1 if ft and resume else 0)] if callback else []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = vision_learner(dls, resnet18, pretrained=False, cbs=cbs, path=folder)
    with learn.no_bar(), learn.no_logging():
        if mode == 'full': learn.fit_one_cycle(3)
        elif mode == 'first': learn.fit_one_cycle(3, cbs=StopAfterEpoch0()); learn.save('ck', with_opt=True)
        elif mode == 'resume': learn.load('ck', with_opt=True); learn.fit_one_cycle(3, start_epoch=1)
        elif mode == 'ft_full': learn.fine_tune(2)
        elif mode == 'ft_first':
            stop = StopAfterEpoch0(fit=1)
            learn.add_cb(stop); learn.fine_tune(2); learn.save('ck', with_opt=True)
        elif mode == 'ft_resume': # fine_tune(2)'s second fit, as fine_tune calls it, from its epoch 1
            learn.unfreeze() # before load: Learner.freeze_to clears the optimizer state it would load
            learn.load('ck', with_opt=True)
            learn.fit_one_cycle(2, slice(1e-3/100, 1e-3), pct_start=0.3, div=5.0, start_epoch=1)
    torch.save(learn.model.state_dict(), folder/f'{mode}.pth')

if __name__ == '__main__': main(sys.argv[1], sys.argv[2], sys.argv[3] == '1')
