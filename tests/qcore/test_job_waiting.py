"""The words a waiting job shows: which jobs are ahead of it and roughly how long it waits."""

from __future__ import annotations

from qcore.jobs.runner import waiting_words


def test_waiting_words_name_the_job_ahead_and_the_wait() -> None:
    text = waiting_words([(12, "convert", "3 of 9 recipes")], 250)
    assert text == "waiting for a free worker: job 12 (convert, 3 of 9 recipes) ahead, about 4 min"


def test_waiting_words_with_many_ahead_and_short_or_unknown_waits() -> None:
    ahead = [(i, "debug", "queued") for i in range(1, 6)]
    assert waiting_words(ahead, 30).endswith("job 3 (debug, queued) and 2 more ahead, less than a minute")
    assert waiting_words([], 0) == "waiting for a free worker"
    assert waiting_words([(1, "qat", "epoch 2 of 5")], 3 * 3600).endswith("about 3 h")
