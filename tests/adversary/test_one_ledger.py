"""One hospital, one ledger: a local DP run from the command line and a federation joined by the same
hospital (same --home) charge the same ledger, so the epsilon the hospital sees is everything it spent.

Before, `dopamine train` used data_dir()/privacy-ledger.sqlite and `dopamine join` WORKDIR/ledger.sqlite:
the same patients' privacy was spent in two ledgers, each claiming less than the truth.
"""

import json

from core.cli import main
from core.privacy.accountant import compute_epsilon_history


def test_cli_train_and_join_spend_one_ledger(tmp_path, data, https_server, federation_in_process, capsys):
    home = tmp_path / "hospital-1-home"
    code = main(["train", str(data / "hospital_01"), "--mode", "cdp", "--model", "small_cnn", "--image-size", "32",
                 "--epochs", "1", "--batch-size", "4", "--noise-multiplier", "1.0", "--delta", "1e-3",
                 "--max-epsilon", "100", "--home", str(home), "--out", str(tmp_path / "local.dpm"), "--json"])
    assert code == 0
    local = json.loads(capsys.readouterr().out)
    assert local["ledger_path"] == str(home / "privacy-ledger.sqlite")

    federation = federation_in_process(tmp_path / "federation", data, https_server, homes={1: home})
    federation.run()
    for number in (1, 2, 3):
        assert federation.results[number].reason == "completed", federation.results[number]

    assert main(["ledger", "show", "--home", str(home), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    keys = [c["key"] for c in summary["charges"]]
    assert any(k.startswith("local:") for k in keys) and any(k.startswith("fed:") for k in keys)
    history = [(c["noise_multiplier"], c["sample_rate"], c["steps"]) for c in summary["charges"]]
    total = compute_epsilon_history(history, delta=summary["delta"], accountant=summary["accountant"])
    assert summary["epsilon_spent"] == total > local["ledger_spent"]  # the federation added to the local run
    assert federation.results[1].epsilon == total  # what the join reports is the whole ledger, not its part
    # The join's ledger description states the threat model the epsilon holds against.
    assert any("t = 1" in c["description"] for c in summary["charges"] if c["key"].startswith("fed:"))
    # Another hospital's home holds only its own federation charges.
    assert all(k.startswith("fed:") for k in federation.ledger_keys(2))
    # Everything that left, and the cap set by the first run, are in the one signed audit log.
    assert main(["audit", "verify", "--home", str(home), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] and verified["signatures_checked"]
