"""Stream state of sequence models across the ways a served version can change."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.model import ModelSource, ServedModel
from service.scoring.streams import StreamStates
from tests.training.sequence_data import rotating
from training.detector.sequence import SequenceDetector

SOURCE = ModelSource(uri="models:/pumps@champion", name="pumps", version="3", alias="champion",
                     run_id="r3", origin="cache")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    normal, _ = rotating(400, seed=0)
    det = SequenceDetector(kind="seq_ae", time_column="t", window=8, max_epochs=2, seed=0)
    det.fit(normal.iloc[:300]).calibrate(normal.iloc[300:])
    return det.save(tmp_path_factory.mktemp("seq") / "detector")


def test_a_confirmed_version_keeps_its_streams_a_reloaded_one_starts_afresh(saved):
    states = StreamStates(max_keys=10, idle_s=60)
    served = ServedModel.load(SOURCE, saved, 100)
    stream, _ = states.of(served)
    # The registry confirms the cached version: same networks, another source.
    confirmed = replace(served, source=replace(SOURCE, origin="registry"))
    assert states.of(confirmed)[0] is stream
    # The same version loaded again (a reload): new networks, new streams.
    assert states.of(ServedModel.load(SOURCE, saved, 100))[0] is not stream
