"""A real federation of processes (crash_kit.ProcessFederation: the coordinator and ``dopamine join``
hospitals, FSCDP, small_cnn at 32 px) where each hospital reaches the coordinator over a network of its
own (fault_proxy.py):

- ``Link(faults=...)``: a transparent FaultProxy. The hospital's invitation is rewritten to the proxy's
  port on 127.0.0.1 (the coordinator URL is not part of the signed plan), so the coordinator's certificate
  name, 127.0.0.1, still matches and TLS stays end-to-end.
- ``Link(connect=True)``: the hospital's explicit HTTPS proxy (``proxy`` in its home's network.toml), a
  ConnectProxy. Its invitation names a port nothing listens on, which the proxy routes to the
  coordinator: the hospital finishes only if every byte went through the proxy.
- ``Link(timeout_s=...)``: the home's dead-link timeout (network.toml).

``run_network_cell`` starts it all, waits for the end, checks crash_kit's invariants (finished, no ledger
under-counts its audit log, no round released twice or over fewer than m, every file readable) and
that nothing was charged twice (each hospital's ledger holds exactly one charge per round attempt it sent,
however often the link made it resend), and collects the figures: round times, retries, the time each
dead link took to be noticed, what each proxy did.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from crash_kit import ROOT, CellResult, ProcessFederation, check_invariants
from fault_proxy import ConnectProxy, FaultProxy, Faults

from core.federation.simulate import free_port

CELL_BOUND_S = 300.0
RESULTS = ROOT / "build" / "reliability" / "network"
UPLOAD_BYTES = 200_000  # an FSCDP upload of small_cnn (60 824 values of 32 bits) is about 243 KB


@dataclass
class Link:
    faults: Faults | None = None
    connect: bool = False  # through an explicit HTTPS (CONNECT) proxy instead of a transparent one
    timeout_s: float | None = None  # the home's network timeout; None: the default (60 s)


@dataclass
class NetworkResult:
    name: str
    cell: CellResult
    links: dict[str, dict] = field(default_factory=dict)  # hospital -> its link's settings
    round_seconds: dict[int, float] = field(default_factory=dict)
    proxies: dict[str, dict] = field(default_factory=dict)  # hospital -> what its proxy did
    retries: dict[str, int] = field(default_factory=dict)  # hospital -> retry warnings it reported
    resent: dict[str, int] = field(default_factory=dict)  # hospital -> uploads sent more than once (audit log)
    charges: dict[str, int] = field(default_factory=dict)  # hospital -> ledger charges
    noticed_dead_link_s: dict[str, float] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["cell"]["violations"] = [v for v in self.cell.violations if not v.startswith("logs:")]
        return data


_UPLOAD = re.compile(r"^POST /v1/rounds/(\d+)/(\d+)/(mask|update)$")


def run_network_cell(name: str, root: Path, data: Path, links: dict[int, Link], *, hospitals: int = 3,
                     rounds: int = 1, **plan) -> NetworkResult:
    """``links``: hospital number (from 1) -> its link; hospitals not named connect directly."""
    from core.federation.invitation import read_invitation, write_invitation
    from core.federation.network import NetworkSettings, save_network_settings
    from core.home import HospitalHome

    started = time.monotonic()
    federation = ProcessFederation(root, data, hospitals=hospitals, rounds=rounds, **{"eval_data": None, **plan})
    port = int(federation.init.coordinator_url.rsplit(":", 1)[1])
    result = NetworkResult(name, CellResult(phase=name, party="network"))
    proxies: dict[int, FaultProxy | ConnectProxy] = {}
    events: list[tuple[float, int, dict]] = []
    try:
        for number, link in sorted(links.items()):
            hospital = federation.hospitals[number - 1]
            invitation = read_invitation(hospital.invitation)
            if link.connect:
                unreachable = free_port()  # nothing listens there: only the proxy's route leads on
                proxy: FaultProxy | ConnectProxy = ConnectProxy(
                    link.faults, route={f"127.0.0.1:{unreachable}": ("127.0.0.1", port)}).start()
                url_port = unreachable
            else:
                proxy = FaultProxy(("127.0.0.1", port), link.faults).start()
                url_port = proxy.port
            proxies[number] = proxy
            result.links[f"h{number:02d}"] = {"connect": link.connect, "timeout_s": link.timeout_s,
                                              **dataclasses.asdict(link.faults or Faults())}
            rewritten = root / "invitations" / f"hospital_{number:02d}.json"
            rewritten.parent.mkdir(parents=True, exist_ok=True)
            write_invitation(rewritten, dataclasses.replace(invitation,
                                                            coordinator_url=f"https://127.0.0.1:{url_port}"))
            hospital.invitation = rewritten
            settings = NetworkSettings(proxy=proxy.url if link.connect else "")
            if link.timeout_s is not None:
                settings.timeout_s = link.timeout_s
                result.timeouts[f"h{number:02d}"] = link.timeout_s
            save_network_settings(HospitalHome.at(hospital.home), settings)

        def on_event(hospital, event: dict) -> None:
            events.append((time.monotonic(), hospital.number, event))

        deadline = time.monotonic() + CELL_BOUND_S
        try:
            federation.start(on_event)
            federation.wait(deadline)
        except TimeoutError:
            result.cell.violations.append(f"the federation did not end within {CELL_BOUND_S:.0f} s (a hang)")
    finally:
        for proxy in proxies.values():  # first: a dead link's held connections must not slow the shutdown
            proxy.close()
        federation.close()
    result.wall_s = round(time.monotonic() - started, 1)
    check_invariants(federation, result.cell)
    _charged_once(federation, result)
    _figures(federation, result, proxies, events)
    if result.cell.violations:
        result.cell.violations.append("logs:\n" + federation.logs())
    return result


def _charged_once(federation: ProcessFederation, result: NetworkResult) -> None:
    """Each ledger holds one charge per (round, attempt) the hospital sent, whatever the link did."""
    from core.audit import read_audit_log
    from core.privacy.ledger import PrivacyLedger

    for number in range(1, len(federation.hospitals) + 1):
        name = f"h{number:02d}"
        home = federation.home(number)
        sends: Counter = Counter()
        if home.audit_log.exists():
            for entry in read_audit_log(home.audit_log):
                match = _UPLOAD.match(entry.destination)
                if entry.kind == "sent" and match:
                    sends[(int(match.group(1)), int(match.group(2)))] += 1
        result.resent[name] = sum(count - 1 for count in sends.values())
        if not home.ledger.exists():
            result.charges[name] = 0
            continue
        with PrivacyLedger(home.ledger) as ledger:
            keys = [key for key in ledger.keys() if ":round:" in key]
        result.charges[name] = len(keys)
        charged = Counter(tuple(int(x) for x in re.findall(r":round:(\d+):attempt:(\d+)$", key)[0]) for key in keys)
        if set(charged) != set(sends) or any(count != 1 for count in charged.values()):
            result.cell.violations.append(f"{name} charged {dict(charged)} for the uploads {dict(sends)} it sent: "
                                          "not exactly once each")


def _figures(federation: ProcessFederation, result: NetworkResult, proxies: dict, events: list) -> None:
    from core.federation.store import CoordinatorStore

    store = CoordinatorStore(federation.paths.state)
    try:
        for record in store.rounds():
            result.round_seconds[record.round] = round(record.finished_at - record.started_at, 2)
    finally:
        store.close()
    for number in range(1, len(federation.hospitals) + 1):
        name = f"h{number:02d}"
        warnings = [(t, e) for t, n, e in events if n == number and e.get("event") == "error" and not e.get("fatal")]
        result.retries[name] = len(warnings)
        proxy = proxies.get(number)
        if proxy is None:
            continue
        stats = proxy.stats
        summary = {k: v for k, v in dataclasses.asdict(stats).items() if k != "events"}
        summary["events"] = [what for _, what in stats.events]
        if isinstance(proxy, ConnectProxy):
            summary["connects"] = len(proxy.connects)
            summary["connect_targets"] = sorted(set(proxy.connects))
        result.proxies[name] = summary
        dead_at = stats.first("half open")
        if dead_at is not None:
            after = [t for t, e in warnings if t >= dead_at]
            if after:
                result.noticed_dead_link_s[name] = round(after[0] - dead_at, 2)
            else:
                result.cell.violations.append(f"{name}'s link went dead but it never reported a retry")


def check_finished(result: NetworkResult, rounds: int, hospitals=("h01", "h02", "h03")) -> None:
    """The invariants held, every round was released once over every hospital in one attempt (the link's
    faults cost retries, never a new attempt), and each ledger holds one charge per round."""
    assert not result.cell.violations, "\n".join(result.cell.violations)
    assert result.cell.outcome == "finished"
    assert [r["round"] for r in result.cell.rounds] == list(range(1, rounds + 1))
    for record in result.cell.rounds:
        assert record["attempts"] == 1 and sorted(record["included"]) == list(hospitals), record
    assert result.charges == {h: rounds for h in hospitals}, result.charges


def write_network_result(result: NetworkResult, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def markdown_table(folder: Path = RESULTS) -> str:
    """One row per cell run (build/reliability/network/*.json), for the README's Reliability section."""
    lines = ["| cell | round times (s) | what the links did | resent uploads | dead link noticed after | "
             "charges per hospital | outcome |", "|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        cell = json.loads(path.read_text())
        faults: Counter = Counter()
        for stats in cell["proxies"].values():
            for key in ("cut", "truncated", "answers_lost", "half_open", "stalled", "replayed"):
                faults[key] += stats.get(key, 0)
            faults["CONNECT tunnels"] += stats.get("connects", 0)
        for link in cell.get("links", {}).values():
            if link.get("bandwidth_bps"):
                faults[f"at {link['bandwidth_bps'] / 1e6:g} Mbit/s"] += 1
            if link.get("latency_s"):
                jitter = f" + up to {1000 * link['jitter_s']:g}" if link.get("jitter_s") else ""
                faults[f"with {1000 * link['latency_s']:g}{jitter} ms latency"] += 1
        did = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in faults.items() if n) or "nothing"
        rounds = ", ".join(f"{s:.1f}" for _, s in sorted(cell["round_seconds"].items(), key=lambda kv: int(kv[0])))
        noticed = ", ".join(f"{h} {s:.1f} s (timeout {cell['timeouts'].get(h, 60.0):g} s)"
                            for h, s in sorted(cell["noticed_dead_link_s"].items())) or "-"
        resent = sum(cell["resent"].values())
        charges = "/".join(str(n) for _, n in sorted(cell["charges"].items()))
        outcome = "VIOLATED: " + cell["cell"]["violations"][0][:60] if cell["cell"]["violations"] else \
            cell["cell"]["outcome"]
        lines.append(f"| {cell['name']} | {rounds} | {did} | {resent} | {noticed} | {charges} | {outcome} |")
    return "\n".join(lines)
