"""Read-only arrays (memory-mapped data, load_data's split indices) never trigger torch's "not writable" warning.

torch emits that warning once per process and then stays silent, so each path runs in a fresh
interpreter with every warning turned into an error.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import warnings
warnings.simplefilter("error")
import numpy as np

def read_only(array):
    array = np.array(array)
    array.setflags(write=False)
    return array
"""

SCORING = """
import qmia_fast as qf
images, split = qf.load_data("builtin")
np.save(WORK + "/images.npy", images[:24])
mapped = np.load(WORK + "/images.npy", mmap_mode="r")  # read-only memory map
scorer = qf.Scorer(qf.load_model("builtin"), "loss", t=200)
idx = split.members[:24]  # load_data's split arrays are read-only
assert not mapped.flags.writeable and not idx.flags.writeable
scores = scorer.score(mapped, indices=idx)
assert np.array_equal(scores, scorer.score(np.array(mapped), indices=np.array(idx)))
"""

REPORT = """
from qmia_fast.results import report
labels = read_only(np.repeat([1, 0], 50))
scores = read_only(np.linspace(0.0, 1.0, 100))
built = report.build_report({"s": (scores, read_only(scores > 0.5))}, labels, alpha=0.1)
arrays = report.score_arrays({"s": (scores, read_only(scores > 0.5))}, labels, raw_scores=read_only(np.exp(-scores)),
                             thresholds=read_only(np.zeros((3, 100))))
report.write_report(WORK + "/out", built, arrays, plots=False)
"""

ATTACK_FIT = """
from qmia_fast.attack import QuantileAttack, synthetic_problem
public = synthetic_problem(40, seed=0)
QuantileAttack(n_models=3, epochs=1, width=4, depth=1, head_width=8).fit(read_only(public.images),
                                                                         read_only(public.scores))
"""

ATTACK_PREDICT = """
from qmia_fast.attack import QuantileAttack, synthetic_problem
public = synthetic_problem(40, seed=0)
attack = QuantileAttack(n_models=3, epochs=1, width=4, depth=1, head_width=8).fit(public.images, public.scores)
attack.predict(read_only(public.images), read_only(public.scores))
"""

VOTE = """
from qmia_fast.attack import majority_vote
majority_vote(read_only(np.zeros(5)), read_only(np.zeros((3, 5))), with_margin=True)
"""

# The attack takes numpy arrays with np.ascontiguousarray, which keeps a read-only array read-only, before
# torch.from_numpy: regress/inputs.py (as_image_tensor, as_aux_tensor) and attack.py (majority_vote) need to
# copy read-only inputs. Strict: these fail loudly once fixed, so the marks get removed.
@pytest.mark.parametrize("snippet", [
    pytest.param(SCORING, id="scorer-memmap-and-split-indices"),
    pytest.param(REPORT, id="report"),
    pytest.param(ATTACK_FIT, id="attack-fit"),
    pytest.param(ATTACK_PREDICT, id="attack-predict"),
    pytest.param(VOTE, id="vote"),
])
def test_read_only_arrays_raise_no_warning(tmp_path, snippet):
    code = PRELUDE + f"WORK = {str(tmp_path)!r}\n" + textwrap.dedent(snippet) + "\nprint('clean')\n"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("clean"), proc.stderr[-2000:]
