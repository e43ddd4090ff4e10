"""PyTorch conformance on torch's per-module samples (ModuleInfo, common_modules.module_db):
the frontend's layers of the same name, built with the same constructor arguments and torch's
weights (state_dict), against torch: forward outputs, input and parameter gradients, float32
and float64, training and evaluation mode, on the reference backend and (float32) LLVM. Samples the
frontend does not take: ``tests/conformance/modules.UNSUPPORTED``."""
import pytest

from tests.conformance import harness as H
from tests.conformance import modules as M
from tests.conformance import summary


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", M.MODULES)
def test_module_samples_agree_with_torch_on_reference_and_llvm(name, dtype):
    # CI time: LLVM compiles the float32 groups; the reference runs both dtypes
    results = M.check_module(name, dtype, ("reference", "llvm") if dtype == "float32"
                             else ("reference",))
    problems = []
    for backend, pairs in results.items():
        agree, listed, bad, notes = H.judge(pairs, backend,
                                            lambda s, b: M.unsupported(name, s, b), M.KNOWN)
        summary.record("modules", backend, agree, listed, len(bad))
        summary.NOTES.extend(f"modules {name} {dtype}: {n}" for n in notes)
        problems += bad
    assert not problems, f"nn.{name} ({dtype}): {len(problems)} samples disagree with " \
        f"torch:\n" + "\n".join(problems[:20])


def test_the_unsupported_table_names_only_mapped_modules():
    assert not {u.module for u in M.UNSUPPORTED} - set(M.MODULES)
