"""One process of the portability tests: `python kernels_job.py DATA OUT [portable]`. Trains
`cnn_learner(dls, resnet18, pretrained=False)` with `ReproducibleCallback(21)` for one epoch on the digits folder DATA
(16 px) in the CPU kernels the environment gives it, after `portable_kernels()` when asked (the one documented step,
before the model is built), and writes the run's record to OUT. Prints the final weights' digest."""
import sys, warnings
from fastai_repro.determinism import portable_kernels

def main(data:str, out:str, portable:bool=False):
    "Train one epoch and save the record; print the final weights' digest and the kernels the record names"
    if portable: portable_kernels() # first, before anything runs a kernel
    from fastai.vision.learner import cnn_learner
    from fastai.vision.models import resnet18
    from fastai_repro.all import ReproducibleCallback, digits_dls, weights_digest
    dls = digits_dls(data, seed=21, size=16, bs=32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = cnn_learner(dls, resnet18, pretrained=False, cbs=ReproducibleCallback(21))
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    learn.reproducible.record.save(out)
    print(weights_digest(learn.model), learn.reproducible.record.fits[0]['env']['kernels']['mode'])

if __name__ == '__main__': main(sys.argv[1], sys.argv[2], sys.argv[3:] == ['portable'])
