"""Edges of reading and comparing records (issue 23): an absurd number of columns, a FIFO, a huge sparse file, two empty
records, terminal escape sequences in a record. Each is refused or answered quickly, `diff` exits 2 where it cannot
tell, and nothing from a record reaches the terminal raw. Records are made by hand: no torch, no training."""
import json, os, threading, time, tracemalloc, unicodedata, zlib
import pytest
import fastai_repro.runrecord as rr
from fastai_repro.runrecord import RecordError, RunRecord
from fastai_repro.compare import compare
from fastai_repro.cli import main

MAX_BYTES, MAX_COLUMNS = getattr(rr, 'MAX_BYTES', 2**30), getattr(rr, 'MAX_COLUMNS', 1000) # the limits picked

def record(n:int=4, cols=('rng_torch',), **facts) -> RunRecord:
    "A record of one fit with `n` train batches, each column of `cols` holding the batch's number"
    rec = RunRecord(fits=[dict(fit=0, seed=21, init_weights=1, final_weights=2, **facts)])
    rec.add_rows([dict(fit=0, epoch=0, phase='train', iter=i, **dict.fromkeys(cols, i), loss=0.5) for i in range(n)])
    return rec

def wide(path, n_cols:int, n_rows:int=2):
    "A record file of `n_rows` batches with `n_cols` generator columns, written as the writer would (CRC and all)"
    d = lambda o: json.dumps(o, separators=(',', ':')) + '\n'
    cols = ['fit', 'epoch', 'phase', 'iter'] + [f'rng_{i}' for i in range(n_cols)] + ['loss']
    body = d({'format': rr.FORMAT, 'version': 2, 'columns': cols}) + d({'fit': {'fit': 0, 'seed': 1}})
    body += ''.join(d([0, 0, 'train', i] + [i] * n_cols + [0.5]) for i in range(n_rows))
    path.write_text(body + d({'end': {'fits': 1, 'events': 0, 'batches': n_rows, 'crc32': zlib.crc32(body.encode())}}))
    return path

def test_absurd_column_count_is_refused_fast(tmp_path, capsys):
    "Point 1: 10^5 generator columns took a minute and GBs; now refused at the header, naming the limit"
    p = wide(tmp_path/'wide.jsonl', 100_000)
    t = time.perf_counter()
    with pytest.raises(RecordError, match=f'line 1: .*100005 batch columns.* {MAX_COLUMNS}'): RunRecord.load(p)
    assert time.perf_counter() - t < 2
    assert main(['diff', str(p), str(p)]) == 2 and f'{MAX_COLUMNS}' in capsys.readouterr().err
    with pytest.raises(ValueError, match=str(MAX_COLUMNS)): # the writer never writes what the reader refuses
        record(cols=[f'rng_{i}' for i in range(MAX_COLUMNS)]).to_bytes()

def test_record_at_the_column_limit_is_compared(tmp_path):
    "Point 1: the most columns a record may hold are read and compared in well under a second each"
    n = MAX_COLUMNS - 5 # with the batch keys and the loss
    a = wide(tmp_path/'a.jsonl', n, 50)
    lines = a.read_text().splitlines(True) # batch 7's last generator differs
    lines[9] = lines[9].replace(',7,0.5]', ',8,0.5]')
    (tmp_path/'b.jsonl').write_text(''.join(lines))
    t = time.perf_counter()
    with pytest.raises(RecordError, match='CRC-32'): RunRecord.load(tmp_path/'b.jsonl') # every line checked
    end = {'end': {'fits': 1, 'events': 0, 'batches': 50, 'crc32': zlib.crc32(''.join(lines[:-1]).encode())}}
    (tmp_path/'b.jsonl').write_text(''.join(lines[:-1]) + json.dumps(end) + '\n')
    c = compare(a, tmp_path/'b.jsonl')
    assert time.perf_counter() - t < 5 # about 0.3 s here (10^5 columns, refused now, took 50 to 75 s)
    assert (c.causes, str(c.first_divergence)) == (['rng'], f'fit 0, epoch 0, train batch 7 (rng_{n - 1})')

def test_fifo_and_other_non_files_are_refused_before_opening(tmp_path, capsys):
    "Point 2: a FIFO hung `diff` forever (open waits for a writer); a directory or a device is no record either"
    fifo, good = tmp_path/'fifo.jsonl', record().save(tmp_path/'good.jsonl')
    os.mkfifo(fifo)
    rc = []
    t = threading.Thread(target=lambda: rc.append(main(['diff', str(fifo), str(good)])), daemon=True)
    t.start(); t.join(10)
    if t.is_alive(): # it hangs: let it go by writing nothing to the FIFO, then fail
        open(fifo, 'wb').close()
        t.join(10)
        pytest.fail('diff waited for a writer on a FIFO')
    assert rc == [2] and 'fifo.jsonl: not a regular file' in capsys.readouterr().err
    for p in (tmp_path, '/dev/null'):
        with pytest.raises(RecordError, match='not a regular file'): RunRecord.load(p)

def test_huge_file_is_refused_from_its_size(tmp_path, monkeypatch):
    "Point 3: a sparse file over the limit was read whole (a GiB of memory) before being refused; now from `stat`"
    p = tmp_path/'sparse.jsonl'
    with open(p, 'wb') as f: f.truncate(MAX_BYTES + 1) # sparse: takes no disk
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match='over the limit'): RunRecord.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 2**20, peak
    good = record().save(tmp_path/'good.jsonl')
    monkeypatch.setattr(rr, 'MAX_BYTES', good.stat().st_size - 1) # never more than the limit, even from bytes
    with pytest.raises(RecordError, match='over the limit'): RunRecord.load(good)
    with pytest.raises(RecordError, match='over the limit'): RunRecord.from_bytes(good.read_bytes())

def test_empty_records_cannot_tell(tmp_path, capsys):
    "Point 4: two valid records with no fit and no batch exited 1 ('differ'); nothing was compared: exit 2, and why"
    a, b = RunRecord().save(tmp_path/'a.jsonl'), RunRecord().save(tmp_path/'b.jsonl')
    assert RunRecord.load(a) == RunRecord() # an empty record is a record: it round-trips
    assert main(['diff', str(a), str(b)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith('EMPTY') and 'run a and run b hold no fit and no batch' in err, (out, err)
    assert main(['diff', str(a), str(record().save(tmp_path/'c.jsonl'))]) == 2 # one empty: nothing to compare with
    assert 'run a holds no fit and no batch' in capsys.readouterr().err

def controls(s:str) -> set:
    "The control characters (C0, DEL, C1) and direction overrides in `s`, a newline aside"
    return {ch for ch in s if ch != '\n' and (unicodedata.category(ch) == 'Cc' or '\u202a' <= ch <= '\u202e')}

def test_escape_sequences_from_a_record_are_not_printed_raw(tmp_path, capsys):
    "Point 5: a record's text (facts, column names, an end's reason) reached the terminal raw: ESC, CSI, BEL, a newline"
    evil = '\x1b]0;owned\x07\x1b[2J\x9b31m\r\nSAME: fake line\u202e\x7f'
    col = 'rng_' + evil
    a = record(cols=(col,), call=[dict(method='fit', args={})], end=dict(status='completed'))
    b = record(cols=(col,), call=[dict(method='fit', args={'note': evil})],
               end=dict(status='interrupted', reason=evil, epoch=0, phase='train', iter=3))
    b.rows = [r[:4] + (99,) + r[5:] if r[3] == 1 else r for r in b.rows]
    a, b = a.save(tmp_path/'a.jsonl'), b.save(tmp_path/'b.jsonl')
    assert main(['diff', str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert not controls(out) and '\\x1b]0;owned\\x07' in out, out
    assert out.startswith('DIFFER') and not [l for l in out.splitlines() if l.startswith('SAME')] # no forged line
    c = compare(a, b)
    for text in (c.report(), c.verdict(), c._repr_markdown_()): assert not controls(text), text
    assert c.first_divergence.components == [col] # the data itself is kept as written: only what is printed is escaped
