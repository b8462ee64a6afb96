"""Run records on the digits images: two runs give equal records row for row, recording changes no bit of training,
and a saved record round-trips and stays small."""
import json
from fastai_repro.all import RunRecord, weights_equal
from helpers import train, make_learner

def test_two_runs_give_equal_records(new_dls):
    a, b = train(new_dls()), train(new_dls(), lr_find=True)
    ra, rb = a.reproducible.record, b.reproducible.record
    assert ra.batches.equals(rb.batches) and ra.fits == rb.fits
    assert len(ra.fits) == 2 and len(ra.batches) == 2 * (len(a.dls.train) + len(a.dls.valid))
    assert rb.events == [dict(event='lr_find', before_fit=0, seed=rb.events[0]['seed'])] and ra.events == []
    # each generator and each digest column takes several values: the fingerprints follow the stream
    df = ra.batches
    for c in ('rng_random', 'rng_torch', 'rng_dl0', 'inputs', 'targets', 'loss'): assert df[c].nunique() > 1, c
    assert list(df.columns[:4]) == ['fit', 'epoch', 'phase', 'iter'] and set(df.phase) == {'train', 'valid'}
    c = train(new_dls(), seed=22).reproducible.record
    assert not c.batches.equals(ra.batches)

def test_recording_changes_no_bit(new_dls):
    def run(every):
        "`fine_tune(1)` of the pets learner recording every `every` batches (0: none)"
        learn = make_learner(new_dls())
        learn.reproducible.every = every
        with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
        return learn
    on, off = run(1), run(0)
    assert weights_equal(on.model, off.model)
    assert len(on.reproducible.record.batches) > 0 and len(off.reproducible.record.batches) == 0

def test_saved_record_round_trips_and_is_small(new_dls, tmp_path):
    learn = make_learner(new_dls())
    learn.reproducible.save_to = tmp_path/'runs'
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1)
    rec, path = learn.reproducible.record, learn.reproducible.saved_as
    assert path.parent == tmp_path/'runs' and [p.name for p in path.parent.iterdir()] == [path.name]
    assert RunRecord.load(path) == rec
    batch_bytes = sum(len(l) for l in path.read_text().splitlines(True) if l.startswith('['))
    assert batch_bytes / len(rec.rows) <= 512
    head = json.loads(path.read_text().splitlines()[0])
    assert head['format'] == 'fastai_repro.RunRecord' and head['version'] == 2

def test_export_carries_no_record(new_dls, tmp_path):
    learn = make_learner(new_dls())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert len(learn.reproducible.record.rows) > 0
    learn.export(tmp_path/'with.pkl')
    learn.remove_cb(learn.reproducible)
    learn.export(tmp_path/'without.pkl')
    assert (tmp_path/'with.pkl').stat().st_size - (tmp_path/'without.pkl').stat().st_size < 4096
