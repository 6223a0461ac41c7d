"""No cross-talk under load: concurrent gradio_client clients against the app on loopback.

The app runs in this process (so the test can see its model's hooks and lock), serving SmolLM2-135M
with the queue settings of `python app.py`. The load itself is bench/load.py, which also prints throughput
and latency; here it runs small: 4 clients, 24 requests over one prompt, three head sets that change the
answer and both modes, so any ablation leaking into another client's request would change an answer. The
200-request run is `python bench/load.py`.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.load import PROMPTS, distinct_requests, run_load
from safety_heads.ablation import count_hooks
from safety_heads.answers import DecodingConfig, generate_pair
from safety_heads.models import SMOLLM2_135M_SAFETY
from tests.test_hardening import lock_free

pytestmark = pytest.mark.slow  # serves the app in-process and generates a few hundred tokens
N_REQUESTS = 24


@pytest.fixture(scope="module")
def report(smollm2):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFETY_HEADS_PRELOAD", "0")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("SAFETY_HEADS_APP_MODEL", SMOLLM2_135M_SAFETY)
        app = importlib.import_module("app")
        mp.setattr(app, "cache", app.ModelCache(lambda name, runtime, report: smollm2))
        distinct = distinct_requests(SMOLLM2_135M_SAFETY, 4, PROMPTS[1:2], ["", "18-8", "7-2, 17-2"])
        report = run_load(app, smollm2, distinct, n_requests=N_REQUESTS, clients=4)
    print(report.summary())
    return report


def test_every_answer_equals_the_same_request_alone(report):
    assert len(report.outcomes) == N_REQUESTS
    assert {o.request.api_name for o in report.outcomes} == {"/compare", "/attention", "/head_options"}
    assert not report.mismatches(), [(o.request, o.error) for o in report.mismatches()[:3]]
    ablated = {result[1] for request, result in report.alone.items() if request.api_name == "/compare"}
    assert len(ablated) > 1, "the head sets must change the answer for this to test anything"


def test_the_queue_refuses_the_excess_and_serves_the_rest(report):
    refused, answered, failed = report.burst["refused"], report.burst["answered"], report.burst["failed"]
    assert failed == 0 and refused > 0 and answered > 0
    assert refused + answered == sum(report.burst.values())


def test_no_hook_and_no_lock_remain(report, smollm2):
    assert count_hooks(smollm2) == 0
    assert lock_free(smollm2)


def test_threads_calling_the_library_at_once_never_mix_ablations(smollm2):
    """Below the app's queue: the model's lock alone keeps concurrent ablations apart."""
    cases = [(heads, mode) for heads in ([], [(18, 8)], [(7, 2), (17, 2)], [(1, 0), (27, 5)]) for mode in ("UA", "SC")]
    decoding = DecodingConfig("greedy", 6)
    alone = [generate_pair(smollm2, PROMPTS[1], heads, mode, decoding=decoding) for heads, mode in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(pool.map(lambda case: generate_pair(smollm2, PROMPTS[1], *case, decoding=decoding), cases))
    assert together == alone
    assert len({ablated for _, ablated in alone}) > 1, "the head sets must change the answer for this to test anything"
    assert count_hooks(smollm2) == 0
