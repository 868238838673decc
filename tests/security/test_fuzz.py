"""A short seeded slice of bench/fuzz_tflite.py, and a LiteRT-crashing mutant sent to the real agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from board_agent import protocol
from tests.board_agent.harness import running_agent

# a mutant found by bench/fuzz_tflite.py (seed 0): a well-formed flatbuffer the agent's checks accept,
# on which LiteRT 2.3's CONV_2D kernel dies with SIGSEGV during invoke
SEGV_MODEL = Path(__file__).parent / "data" / "litert_segv.tflite"


@pytest.mark.slow
def test_fuzz_slice_never_crashes_the_caller() -> None:
    """300 seeded mutants of real models: each reader inspects or refuses every one, in-process."""
    from bench.fuzz_tflite import fuzz, seed_models

    counts, accepted, crashes = fuzz(seed_models(), 300, seed=1)
    assert crashes == []
    for name, c in counts.items():
        assert c["crash"] == 0 and c["hang"] == 0, (name, c)
        assert c["ok"] > 0 and c["refused"] > 0, (name, c)  # the slice exercises both outcomes
        assert sum(c.values()) == 300
    assert accepted


@pytest.mark.slow
def test_agent_survives_a_model_that_crashes_litert(tmp_path: Path, agent_models: dict[str, bytes]) -> None:
    """The segfaulting mutant kills only the runner child: the job fails with the signal named,
    and the same agent process answers and runs the next job."""
    from board_agent.uploads import check_tflite

    bad = SEGV_MODEL.read_bytes()
    check_tflite(bad)  # it passes the agent's structural checks: only the runtime can fail on it
    with running_agent(tmp_path / "w") as agent:
        rec = agent.wait(agent.submit(bad, "target=cpu&runs=2&warmup=0"), timeout=120)
        assert rec["status"] == protocol.FAILED
        assert "crashed (SIGSEGV)" in rec["error"]
        status, health = agent.json("GET", protocol.HEALTH, token=False)
        assert status == 200 and health["status"] == "ok"
        after = agent.wait(agent.submit(agent_models["float32"], "target=cpu&runs=2&warmup=0"), timeout=120)
        assert after["status"] == protocol.DONE, after
