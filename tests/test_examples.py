"""Every example runs as a script with its small settings and prints a result a reader can
judge; the numbers it prints are checked against what the example promises."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_digits_mlp_and_cnn():
    out = run("digits.py", "--quick")
    accs = {m: float(a) for m, a in re.findall(r"(MLP|CNN):.*held-out accuracy ([\d.]+)%", out)}
    assert set(accs) == {"MLP", "CNN"} and min(accs.values()) > 85, out   # chance: 10%


def test_second_order_on_logistic_regression():
    out = run("second_order.py", "--quick")
    rows = re.findall(r"^(Newton|CG|L-BFGS).*?loss ([\d. ]+?)  held-out accuracy ([\d.]+)%",
                      out, re.M)
    assert [r[0] for r in rows] == ["Newton", "CG", "L-BFGS"], out
    for _, losses, acc in rows:
        values = [float(v) for v in losses.split()]
        # log(10) = 2.303 at the start (uniform predictions) and monotone descent
        assert values[-1] < values[0] / 2 and float(acc) > 60, out
        assert all(b <= a + 1e-6 for a, b in zip(values, values[1:])), out


def test_conv_autoencoder():
    out = run("autoencoder.py", "--quick")
    err, base = map(float, re.search(r"MSE ([\d.]+) vs ([\d.]+)", out).groups())
    assert err < base / 2, out


def test_char_rnn_teacher_forcing_and_generation():
    out = run("char_rnn.py", "--steps", "30")
    first, last = map(float, re.search(r"\] loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first - 0.5, out          # teacher forcing: the loss per character falls
    generated = out.split("generated open loop:", 1)[1].split("\n[", 1)[0]
    assert len(generated.strip()) > 50, out


@pytest.mark.parametrize("script", ["quickstart.py"])
def test_quickstart(script):
    assert "rows sum to one: True" in run(script)
