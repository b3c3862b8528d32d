"""A coordinator taken back to an old backup: the restore refuses it, and hospitals refuse what it reopens.

`dopamine coordinator restore` over a folder that went further is refused (the first line). Where the
folder is gone, nothing on the coordinator's side knows how far the federation went, so the second
line is the hospitals: a hospital that already received a round's model never computes that round
again, under any attempt number, because that would release a second update of the same round.
"""

import pytest

from core.errors import FederationError
from core.federation.round_machine import OpenAttempt


def test_a_restore_over_a_federation_that_went_further_is_refused(tmp_path):
    from core.federation.backup import backup, restore
    from core.federation.layout import InitConfig, init_federation
    from core.federation.store import CoordinatorStore

    init = init_federation(InitConfig(folder=tmp_path / "fed", name="restore", mode="fscdp", rounds=5, hospitals=3,
                                      hosts=["127.0.0.1"], port=8443, image_size=32))
    old = backup(init.folder, tmp_path / "old.tar.gz")
    store = CoordinatorStore(init.folder / "state.sqlite")
    try:  # the federation went on: two rounds finished, round 3 open
        store.update_meta({"status": "running", "model_round": 2, "round": 3, "attempt": 1, "phase": "advertise"})
    finally:
        store.close()
    with pytest.raises(FederationError, match="would reopen rounds hospitals already took part in"):
        restore(old.path, init.folder)
    assert CoordinatorStore(init.folder / "state.sqlite").all_meta()["model_round"] == 2  # untouched

    # The state damaged beyond reading, but a later model published: that is evidence enough.
    (init.folder / "state.sqlite").write_bytes(b"not a database")
    (init.folder / "models").mkdir(exist_ok=True)
    (init.folder / "models" / "global-r0002.dpm").write_bytes(b"published")
    with pytest.raises(FederationError, match="reopen finished rounds"):
        restore(old.path, init.folder)


def test_hospitals_refuse_a_round_whose_model_they_already_received(tmp_path, data, https_server,
                                                                   federation_in_process):
    """Round 1 is released and every hospital has its model; during round 2 the coordinator is put back
    to before round 1 (a restore without the folder to compare with) and opens round 1 again under a
    fresh attempt number, which the ledger alone would allow. No hospital computes it: nothing is
    charged for it, nothing is uploaded, and the federation stops."""
    federation = federation_in_process(tmp_path, data, https_server, rounds=2, max_attempts=2)
    service = federation.service
    close_step = service._close_step
    restored = []

    def restore_during_round_2(step):
        if service.state.round == 2 and not restored:  # the hospitals sent round 2's keys: they have model 1
            restored.append(True)
            with service.store.transaction() as db:  # what the old backup holds
                service.store.delete_attempt_data(db, 2, 1)
            service._save(model_round=0)
            service._open_attempt(OpenAttempt(round=1, attempt=2, first=True))
            return
        close_step(step)

    service._close_step = restore_during_round_2
    federation.run()
    assert restored
    for number in (1, 2, 3):
        keys = federation.ledger_keys(number)
        assert [k.split(":round:")[1] for k in keys] == ["1:attempt:1"], keys  # round 1 charged once only
        masks = [e.round for e in federation.uploads(number, "mask")]
        assert masks == [1]  # one masked upload: round 1 was not computed again
        assert any(e.kind == "error" and "already received" in e.message for e in federation.events[number])
        result = federation.results[number]
        assert not isinstance(result, Exception), result
        assert result.reason == "stopped"
