"""A record reader that never crashes (issue 11): every damaged file is a `RecordError` naming the line, never another
exception; `fastai-repro diff` exits 2 for a bad file (1 means only that the runs differ) and imports no torch."""
import codecs, json, os, random, subprocess, sys, zlib
import pytest
from fastai.test_utils import synth_learner
from fastai_repro.all import ReproducibleCallback, RecordError, RunRecord
from fastai_repro.cli import main

@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "A real record: two fits of fastai's `synth_learner`, one with a batch cancelled, saved by the callback"
    folder = tmp_path_factory.mktemp('runs')
    learn = synth_learner(n_trn=40, n_val=16, cbs=ReproducibleCallback(21, save_to=folder))
    with learn.no_bar(), learn.no_logging(): learn.fit(2); learn.fit(1)
    path = learn.reproducible.saved_as
    assert len(RunRecord.load(path).fits) == 2
    return path

def write(tmp_path, name, data) -> str:
    "Writes `data` (bytes or text) to the file `name` in `tmp_path`; its path"
    p = tmp_path/name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p

def with_crc(lines:list) -> str:
    "The record's lines with the end line's CRC-32 recomputed: the damage is then only what the lines hold"
    body = ''.join(lines[:-1])
    end = json.loads(lines[-1]); end['end']['crc32'] = zlib.crc32(body.encode())
    return body + json.dumps(end, separators=(',', ':')) + '\n'

@pytest.mark.parametrize('name, edit, msg', [
    ('no_columns', lambda ls: [ls[0].replace('"columns"', '"cols"')] + ls[1:],
     "line 1: the header's 'columns' must be a list"),
    ('deep', lambda ls: ls[:1] + ['[' * 100_000 + ']' * 100_000 + '\n'] + ls[1:], 'line 2: nested too deeply'),
    ('deep_fit', lambda ls: ls[:1] + ['{"fit":' + '[' * 100 + ']' * 100 + '}\n'] + ls[1:],
     'line 2: a fit must be an object'),
    ('fit5', lambda ls: ls[:1] + ['{"fit":5}\n'] + ls[1:], 'line 2: a fit must be an object, got 5'),
    ('fit_seed', lambda ls: ls[:1] + [ls[1].replace('"seed":21', '"seed":"21"')] + ls[2:], "line 2: fit field 'seed'"),
    ('row_type', lambda ls: ls[:-2] + [ls[-2].replace('"valid"', '7').replace('"train"', '7')] + ls[-1:],
     "batch column 'phase' is 7"),
    ('row_loss', lambda ls: ls[:-2] + [ls[-2][:-2] + ',true]\n'] + ls[-1:], 'a batch row with'),
    ('version_str', lambda ls: [ls[0].replace('"version":2', '"version":"1"')] + ls[1:], "a positive integer, got '1'"),
    ('version_new', lambda ls: [ls[0].replace('"version":2', '"version":9')] + ls[1:],
     'written by a newer fastai_repro'),
    ('twice', lambda ls: ls[:-1] + ls[-2:-1] + ls[-1:], 'a batch recorded twice'),
    ('dropped', lambda ls: ls[:-2] + ls[-1:], 'end line counts'),
])
def test_damaged_file_is_refused_with_its_line(saved, tmp_path, name, edit, msg):
    lines = saved.read_text().splitlines(True)
    for text in (''.join(edit(list(lines))), with_crc(edit(list(lines)))): # as damaged, and with a CRC that matches
        with pytest.raises(RecordError, match=None) as e: RunRecord.load(write(tmp_path, f'{name}.jsonl', text))
        assert msg in str(e.value) and f'{name}.jsonl' in str(e.value), str(e.value)

def test_bom_and_version_1_are_read(saved, tmp_path):
    rec = RunRecord.load(saved)
    assert RunRecord.load(write(tmp_path, 'bom.jsonl', codecs.BOM_UTF8 + saved.read_bytes())) == rec
    lines = saved.read_text().splitlines(True) # the format before the CRC: version 1, counts alone
    end = json.loads(lines[-1]); del end['end']['crc32']
    v1 = [lines[0].replace('"version":2', '"version":1'), *lines[1:-1], json.dumps(end) + '\n']
    assert RunRecord.load(write(tmp_path, 'v1.jsonl', ''.join(v1))) == rec

def equal(a, b) -> bool:
    "`a == b` for JSON-like values, a NaN equal to a NaN (a null loss is read as NaN)"
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)): return len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict): return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b or ((a is None or a != a) and (b is None or b != b))

def holds(rec:RunRecord, lines:list) -> bool:
    "Whether `rec` holds exactly what the record file's `lines` say"
    objs = [json.loads(l) for l in lines[1:-1]]
    return (equal(rec.fits, [o['fit'] for o in objs if isinstance(o, dict) and 'fit' in o])
            and equal(rec.events, [o['event'] for o in objs if isinstance(o, dict) and 'event' in o])
            and equal(rec.rows, [o for o in objs if isinstance(o, list)]))

def test_fuzz_every_damage_is_a_record_error(saved, tmp_path):
    "Truncations at every line and byte, byte flips, wrong types: each loads to an equal record or is a RecordError"
    rec, data = RunRecord.load(saved), saved.read_bytes()
    lines, rnd = data.splitlines(True), random.Random(11)
    def check(b:bytes):
        "Loads `b` from a file: 0 if that is a `RecordError`, else 1 (and the record must equal `rec`)"
        p = write(tmp_path, 'fuzz.jsonl', b)
        try: got = RunRecord.load(p)
        except RecordError: return 0
        assert got == rec, b[:200]
        return 1
    loaded = sum(check(b''.join(lines[:k])) for k in range(len(lines))) # whole lines cut off the end
    loaded += sum(check(data[:rnd.randrange(len(data))]) for _ in range(200)) # cut anywhere
    for _ in range(400): # one byte changed anywhere
        b = bytearray(data); i = rnd.randrange(len(b)); b[i] ^= rnd.choice([1, 2, 4, 8, 16, 32, 64, 128, 255])
        loaded += check(bytes(b))
    assert loaded == 0 # every change above damages the record: none may load (nor raise anything else)
    text, refused = data.decode().splitlines(True), 0
    for _ in range(300): # a value of a row or a fit replaced by one of another type
        k = rnd.randrange(1, len(text) - 1)
        o = json.loads(text[k])
        new = rnd.choice(['"x"', 'true', 'null', '1.5', '[]', '{}', '-1', str(2**64), '[[1]]', '"0.5"', '1.0'])
        if isinstance(o, list): o = json.dumps(o[:(j := rnd.randrange(len(o)))] + ['@'] + o[j + 1:])
        else: o = json.dumps({kk: {**v, rnd.choice(list(v)): '@'} for kk, v in o.items()})
        ls = text[:k] + [o.replace('"@"', new) + '\n'] + text[k + 1:]
        assert check(''.join(ls).encode()) == 0 # the CRC no longer matches
        try: got = RunRecord.load(write(tmp_path, 'typed.jsonl', with_crc(ls))) # the CRC matches: the types decide
        except RecordError: refused += 1; continue
        assert holds(got, ls), ls[k] # a value a record may hold (a null digest, say), loaded as written
    assert refused > 200

def test_diff_exit_codes_and_no_traceback(saved, tmp_path, capsys):
    other = RunRecord.load(saved); other.fits[0]['seed'] = 22; other.fits[0]['init_weights'] = 1
    b = other.save(tmp_path/'b.jsonl')
    bad = write(tmp_path, 'bad.jsonl', saved.read_text().replace('"columns"', '"cols"'))
    assert main(['diff', str(saved), str(saved)]) == 0
    assert main(['diff', str(saved), str(b)]) == 1
    capsys.readouterr()
    assert main(['diff', str(saved), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('fastai-repro diff: ') and 'bad.jsonl, line 1' in err and 'Traceback' not in err
    assert err.count('\n') == 1

def test_diff_imports_no_torch_or_fastai(saved):
    code = (f"import sys; from fastai_repro.cli import main; rc = main(['diff', {str(saved)!r}, {str(saved)!r}]); "
            "print(rc, sorted(m for m in ('torch', 'fastai', 'fastcore') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("0 []"), out

def test_diff_prints_facts_a_console_cannot_show(saved, tmp_path):
    "A fact in a script the console's encoding lacks is no crash: exit 1 (the runs differ), not a traceback"
    other = RunRecord.load(saved)
    other.fits[0]['call'][0]['args']['note'], other.fits[0]['init_weights'] = 'café \ud800', 1
    b = other.save(tmp_path/'b.jsonl')
    r = subprocess.run([sys.executable, '-m', 'fastai_repro', 'diff', str(saved), str(b)], capture_output=True,
                       env={**os.environ, 'PYTHONIOENCODING': 'ascii'})
    assert r.returncode == 1 and b'Traceback' not in r.stderr and r.stdout.startswith(b'DIFFER'), r.stderr[-500:]
