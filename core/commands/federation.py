"""``dopamine coordinator init|serve|start|stop|pause|resume|status|backup|restore``, ``dopamine join``,
``dopamine leave``, ``dopamine simulate``, ``dopamine audit verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.commands.home import add_home_option, home_of
from core.commands.progress import progress_bar
from core.device import DEFAULT_DEVICE, DEVICE_HELP, DEVICES


def _hosts(values: list[str] | None) -> list[str]:
    hosts: list[str] = []
    for value in values or ["localhost", "127.0.0.1"]:
        hosts += [h.strip() for h in value.split(",") if h.strip()]
    return hosts


def _add_plan_options(parser: argparse.ArgumentParser, *, simulate: bool = False) -> None:
    parser.add_argument("--mode", choices=["f", "fpdp", "fscdp"], required=not simulate, default="fscdp" if simulate else None,
                        help="f: FedAvg; fpdp: local DP-SGD per hospital; fscdp: Dopamine (DP-SGD step + secure aggregation)")
    parser.add_argument("--model", default="small_cnn", help="squeezenet1_1 | resnet18_gn | small_cnn")
    parser.add_argument("--rounds", type=int, required=not simulate, help="number of rounds")
    parser.add_argument("--threshold", type=int,
                        help="m: fewest hospitals a sum is released over (default: about 2/3 of them, at least 2, "
                             "and 2m > K + t)")
    parser.add_argument("--colluders", type=int,
                        help="t: hospitals that may collude with the coordinator; each adds noise sigma*C/sqrt(m - t) "
                             "(default 1 with 2 or more hospitals; 0 protects only against the coordinator)")
    parser.add_argument("--max-attempts", type=int,
                        help="attempts of one round a hospital takes part in, each charged (default 5)")
    parser.add_argument("--noise-multiplier", type=float, help="sigma (fpdp, fscdp)")
    parser.add_argument("--max-grad-norm", type=float, help="per-example clipping norm C (fpdp, fscdp)")
    parser.add_argument("--sample-rate", type=float, help="q: Poisson sample rate per round (fscdp)")
    parser.add_argument("--batch-size", type=int, help="local batch size (f, fpdp)")
    parser.add_argument("--local-epochs", type=int, help="local epochs per round (f, fpdp)")
    parser.add_argument("--lr", type=float, help="learning rate (fscdp: the server's; f/fpdp: the local one)")
    parser.add_argument("--momentum", type=float, help="momentum (fscdp: the server's; f/fpdp: the local one)")
    parser.add_argument("--delta", type=float, help="delta of the (epsilon, delta) guarantee (fpdp, fscdp)")
    parser.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    parser.add_argument("--server-optimizer", choices=["sgd", "adam"],
                        help="the coordinator's optimizer on each round's aggregate (default sgd)")
    parser.add_argument("--server-lr-schedule", choices=["constant", "cosine"],
                        help="the coordinator's learning rate: constant (default) or cosine decay to 0 over the rounds")
    parser.add_argument("--image-size", type=int, default=None if simulate else 64, help="model input size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secagg", action=argparse.BooleanOptionalAction, default=None,
                        help="secure aggregation in f/fpdp (always on in fscdp)")


def register(subparsers) -> None:
    coordinator = subparsers.add_parser("coordinator", help="create, serve and watch a federation (coordinator side)")
    sub = coordinator.add_subparsers(dest="coordinator_command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="create a federation folder: CA, certificates, plan, invitations")
    init.add_argument("folder", type=Path)
    init.add_argument("--name", required=True, help="federation name shown to hospitals")
    init.add_argument("--hospitals", type=int, required=True, help="number of hospitals (one invitation each)")
    _add_plan_options(init)
    init.add_argument("--server-lr", type=float, help="f/fpdp: server learning rate on the averaged delta (default 1)")
    init.add_argument("--server-momentum", type=float, help="f/fpdp: server momentum (default 0: plain FedAvg)")
    init.add_argument("--update-bound", type=float, help="f/fpdp with --secagg: L2 clip of each delta (default 10)")
    init.add_argument("--host", action="append",
                      help="host name or IP hospitals use to reach the coordinator (repeat or comma-separate; "
                           "the first one goes into the invitations). Default: localhost,127.0.0.1")
    init.add_argument("--port", type=int, default=8443)
    init.add_argument("--eval-data", type=Path, help="labelled image folder the coordinator evaluates each model on")
    init.add_argument("--eval-every", type=int, help="evaluate every N rounds (and after the last)")
    init.add_argument("--hospital-name", action="append", dest="hospital_names",
                      help="name of each hospital, in order (repeat; default hospital-01, ...)")
    init.add_argument("--invitations", type=Path, metavar="DIR",
                      help="write the invitations and their printable sheets to DIR (default: FOLDER/invitations)")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=_init)

    serve = sub.add_parser("serve", help="run the coordinator (HTTPS) until SIGTERM or Ctrl+C, then stop gracefully")
    serve.add_argument("folder", type=Path)
    serve.add_argument("--host", help="address to listen on (default: from coordinator.toml)")
    serve.add_argument("--port", type=int, help="port to listen on (default: from coordinator.toml)")
    serve.set_defaults(func=_serve)
    evaluator = sub.add_parser("evaluator", help="(internal) the evaluation child process of `serve` "
                                                 "(core.federation.evaluation)")
    evaluator.add_argument("folder", type=Path)
    evaluator.set_defaults(func=_evaluator)

    start = sub.add_parser("start", help="start `serve` in the background (as the app does) and wait until it answers")
    start.add_argument("folder", type=Path)
    start.set_defaults(func=_start)
    stop = sub.add_parser("stop", help="stop a coordinator serving FOLDER (SIGTERM: graceful; it resumes when started again)")
    stop.add_argument("folder", type=Path)
    stop.set_defaults(func=_stop)
    pause = sub.add_parser("pause", help="hold the federation: the round in progress finishes, the next waits")
    pause.add_argument("folder", type=Path)
    pause.set_defaults(func=_pause)
    resume = sub.add_parser("resume", help="let a paused federation go on")
    resume.add_argument("folder", type=Path)
    resume.set_defaults(func=_resume)

    status = sub.add_parser("status", help="rounds, phase, hospitals and last metrics of a federation")
    status.add_argument("folder", type=Path)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    backup = sub.add_parser("backup", help="back up a coordinator folder (safe while it serves; the file holds its keys)")
    backup.add_argument("folder", type=Path)
    backup.add_argument("out", type=Path, nargs="?",
                        help="the backup file (default: beside FOLDER, named after its round and the time)")
    backup.add_argument("--json", action="store_true")
    backup.set_defaults(func=_backup)
    restore = sub.add_parser("restore", help="restore a backup into FOLDER (stopped); refused if FOLDER went further")
    restore.add_argument("backup", type=Path)
    restore.add_argument("folder", type=Path)
    restore.set_defaults(func=_restore)

    join = subparsers.add_parser("join", help="take part in a federation with this hospital's images")
    join.add_argument("invitation", type=Path, help="the invitation file from the coordinator")
    join.add_argument("--data", type=Path, required=True, help="this hospital's labelled image folder")
    join.add_argument("--labels-csv", type=Path)
    add_home_option(join)
    join.add_argument("--max-epsilon", type=float,
                      help="this run's privacy limit; sets the hospital's cap only if its ledger has none yet "
                           "(required for fpdp/fscdp then); never raises the cap")
    join.add_argument("--accept-roster", metavar="CODE",
                      help="the roster code this hospital confirmed after comparing every peer's fingerprint with "
                           "that hospital (printed by a first run); 'any' skips the check (simulations only)")
    join.add_argument("--threads", type=int, help="CPU threads for local training")
    join.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE, help=DEVICE_HELP)
    _add_proxy_option(join)
    join.add_argument("--network-timeout", type=float, metavar="SECONDS",
                      help="a connection to the coordinator silent this long past the expected answer is declared "
                           "dead and retried (default: the home's network.toml, else 60)")
    join.add_argument("--events-jsonl", action="store_true", help="print every event as one JSON line on stdout")
    join.add_argument("--json", action="store_true", help="print the result as one JSON object at the end")
    join.set_defaults(func=_join)

    leave = subparsers.add_parser("leave", help="leave a federation: tell its coordinator this hospital takes part "
                                                "in no further rounds")
    leave.add_argument("invitation", type=Path, help="the invitation file this hospital joined with")
    add_home_option(leave)
    leave.add_argument("--reason", default="", help="a short reason the coordinator records")
    _add_proxy_option(leave)
    leave.set_defaults(func=_leave)

    simulate = subparsers.add_parser("simulate", help="run a whole federation on this computer (synthetic data)")
    simulate.add_argument("--hospitals", type=int, default=3)
    _add_plan_options(simulate, simulate=True)
    simulate.add_argument("--drop", action="append", default=[], metavar="H@ROUND",
                          help="SIGKILL hospital H during ROUND after it uploaded (repeatable)")
    simulate.add_argument("--restart-dropped", type=float, metavar="SECONDS",
                          help="restart a dropped hospital after this many seconds")
    simulate.add_argument("--per-hospital", type=int, default=200, help="synthetic images per hospital")
    simulate.add_argument("--test-images", type=int, default=200)
    simulate.add_argument("--workdir", type=Path, help="keep everything in this folder (default: temporary)")
    simulate.add_argument("--max-epsilon", type=float, default=1000.0, help="each hospital's cap")
    simulate.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE,
                          help=DEVICE_HELP + "; every hospital's process uses it")
    simulate.add_argument("--json", type=Path, metavar="OUT", help="write the results as one JSON object")
    simulate.set_defaults(func=_simulate)

    audit = subparsers.add_parser("audit", help="check a hospital's signed audit log of everything it sent")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain and the signatures of the home's audit log")
    verify.add_argument("path", type=Path, nargs="?",
                        help="an audit log file, or a hospital home folder (default: the home's audit log)")
    add_home_option(verify)
    verify.add_argument("--public-key", metavar="HEX",
                        help="the signing hospital's raw Ed25519 public key, 64 hex digits (default: the home's "
                             "identity key, when the log is the home's)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_audit_verify)


def _add_proxy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy", metavar="URL",
                        help="reach the coordinator through this HTTPS proxy (CONNECT), e.g. http://proxy:3128; "
                             "'none' connects directly. Default: proxy in the home's network.toml (the app uses it "
                             "too). The federation CA stays pinned: a proxy that inspects TLS is refused")


def _init(args: argparse.Namespace) -> int:
    from core.federation.layout import InitConfig, init_federation

    result = init_federation(InitConfig(
        folder=args.folder, name=args.name, mode=args.mode, rounds=args.rounds, hospitals=args.hospitals,
        hosts=_hosts(args.host), port=args.port, threshold=args.threshold, colluders=args.colluders,
        max_attempts=args.max_attempts, model=args.model,
        image_size=args.image_size, noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
        sample_rate=args.sample_rate, batch_size=args.batch_size, local_epochs=args.local_epochs, lr=args.lr,
        momentum=args.momentum, server_lr=args.server_lr, server_momentum=args.server_momentum,
        server_optimizer=args.server_optimizer, server_lr_schedule=args.server_lr_schedule, delta=args.delta,
        accountant=args.accountant, secagg=args.secagg, update_bound=args.update_bound, seed=args.seed,
        eval_data=args.eval_data, eval_every=args.eval_every, hospital_names=args.hospital_names,
        invitations_dir=args.invitations,
    ))
    if args.json:
        print(json.dumps({"folder": str(result.folder), "coordinator_url": result.coordinator_url,
                          "invitations": [str(p) for p in result.invitations], "plan": result.plan.to_dict(),
                          "plan_hash": result.plan_hash, "ca_fingerprint": result.ca_fingerprint,
                          "sheets": [str(p) for p in result.sheets]}, indent=2))
        return 0
    print("\n".join(result.plan.summary_lines()))
    print(f"Coordinator URL: {result.coordinator_url}")
    print(f"CA fingerprint (hospitals compare it by phone): {result.ca_fingerprint}")
    print(f"Plan hash: {result.plan_hash}")
    print("Invitations (each is a secret until used; hand one to each hospital):")
    for path in result.invitations:
        print(f"  {path}")
    print("Printable sheets with the CA fingerprint (no secret; hand them over separately):")
    for path in result.sheets:
        print(f"  {path}")
    print(f"Start it with: dopamine coordinator serve {result.folder}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from core.federation.server import serve

    print(f"Serving the federation in {args.folder} (Ctrl+C or SIGTERM stops it gracefully).", file=sys.stderr)
    serve(args.folder, host=args.host, port=args.port)
    return 0


def _evaluator(args: argparse.Namespace) -> int:
    from core.federation.evaluation import serve

    return serve(args.folder)


def _start(args: argparse.Namespace) -> int:
    from core.federation.service import CoordinatorService

    state = CoordinatorService(args.folder).start()
    print(f"The coordinator serves {state.url} in the background (process {state.pid}); "
          f"stop it with: dopamine coordinator stop {args.folder}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from core.federation.service import CoordinatorService

    stopped = CoordinatorService(args.folder).stop()
    print("The coordinator stopped; the federation resumes where it was when it is started again." if stopped
          else "No coordinator is running for this folder.")
    return 0


def _pause(args: argparse.Namespace) -> int:
    from core.federation.service import CoordinatorService

    CoordinatorService(args.folder).pause()
    print("Paused: the round in progress finishes, the next one waits at its start (nothing is charged "
          f"while it waits). Resume with: dopamine coordinator resume {args.folder}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from core.federation.service import CoordinatorService

    CoordinatorService(args.folder).resume()
    print("Resumed: the next round goes on.")
    return 0


def _status(args: argparse.Namespace) -> int:
    from core.federation.service import host_status, host_status_lines
    from core.federation.status import read_status, status_text

    status = read_status(args.folder)
    host = host_status(args.folder)
    if args.json:
        print(json.dumps({**status, "host": host.to_dict()}, indent=2))
    else:
        print(status_text(status))
        print("\n".join(host_status_lines(host)))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from core.federation.backup import backup

    info = backup(args.folder, args.out)
    if args.json:
        print(json.dumps({"path": str(info.path), "federation_id": info.federation_id, "model_round": info.model_round,
                          "round": info.round, "attempt": info.attempt, "status": info.status,
                          "created": info.created, "files": info.files, "bytes": info.size}, indent=2))
    else:
        print(f"Backed up {info.describe()}: {info.path} ({info.size} bytes). It holds the federation's keys: "
              "keep it as safe as the folder.")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from core.federation.backup import restore

    info, moved = restore(args.backup, args.folder)
    print(f"Restored {info.describe()} into {args.folder}.")
    if moved is not None:
        print(f"The folder's previous content is in {moved}.")
    print("If the federation went on after this backup, its hospitals refuse the rounds they already took part in.")
    return 0


def _print_event(event) -> None:
    from core.federation import events as ev

    if isinstance(event, ev.PlanReview):
        print(f"Federation {event.federation_name} at {event.coordinator_url}")
        print(f"CA fingerprint: {event.ca_fingerprint}")
        for line in event.plan_lines:
            print(f"  {line}")
        if event.accountant:
            cap = f"{event.max_epsilon:g}" if event.max_epsilon is not None else "none"
            print(f"Taking part in every round would cost this hospital ({event.num_images} images) "
                  f"epsilon = {event.epsilon_cost:.4g} at delta = {event.delta:g} ({event.accountant.upper()}); "
                  f"its cap is {cap}.")
            if event.max_epsilon is not None and event.epsilon_cost > event.max_epsilon:
                print("The whole plan exceeds the cap: this hospital will decline the rounds that would pass it.")
        else:
            print(f"Mode F adds no differential privacy: model updates of {event.num_images} images are sent "
                  "(securely aggregated if the plan says so).")
    elif isinstance(event, ev.Enrolled):
        print(f"Enrolled as {event.hospital_id} ({event.hospital_name}); identity key {event.fingerprint}")
    elif isinstance(event, ev.RosterReview):
        print(f"Every hospital has enrolled in {event.federation_name}. The roster:")
        for h in event.hospitals:
            mark = "  (this hospital)" if h["this_hospital"] else ""
            print(f"  {h['hospital_id']} {h['name']}: {h['num_images']} images, key {h['fingerprint']}{mark}")
        print(event.threat_model)
        print("Call each hospital and compare its key fingerprint above with the one it reads out. Only if all "
              "match, run this command again with")
        print(f"  --accept-roster '{event.code}'")
    elif isinstance(event, ev.ModelReceived):
        shown = ", ".join(f"{k} {event.metrics[k]:.4f}" for k in ("accuracy", "kappa") if isinstance(event.metrics.get(k), float))
        print(f"Round {event.round} done" + (f": {shown}" if shown else "") + ("" if event.included else " (without us)"))
    elif isinstance(event, ev.BudgetCharged):
        print(f"  epsilon spent so far: {event.epsilon:.4g}")
    elif isinstance(event, ev.Declined):
        print(f"Declining round {event.round}: {event.reason}.")
    elif isinstance(event, ev.ErrorEvent):
        print(f"{'error' if event.fatal else 'warning'}: {event.message}", file=sys.stderr)
    elif isinstance(event, ev.Finished):
        print(f"Finished ({event.reason}): took part in {len(event.rounds_participated)} rounds, epsilon {event.epsilon:.4g}, "
              f"{event.bytes_sent} bytes sent" + (f"; model: {event.model_path}" if event.model_path else ""))


def _join(args: argparse.Namespace) -> int:
    from core.federation.client import JoinConfig, run

    config = JoinConfig(invitation=args.invitation, data=args.data, home=home_of(args).root,
                        max_epsilon=args.max_epsilon, accept_roster=args.accept_roster, labels_csv=args.labels_csv,
                        threads=args.threads, device=args.device, proxy=args.proxy, timeout_s=args.network_timeout)

    def on_event(event) -> None:
        if args.events_jsonl:
            print(json.dumps(event.to_dict()), flush=True)
        elif not args.json:
            _print_event(event)
            sys.stdout.flush()

    with progress_bar("Federation", enabled=not (args.json or args.events_jsonl)) as progress:
        result = run(config, progress=progress, on_event=on_event)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    if result.reason == "roster":
        return 3  # waiting for this hospital's people to confirm the roster: run again with --accept-roster
    return 1 if result.reason == "stopped" else 0  # declining at the cap is this hospital's choice, not an error


def _leave(args: argparse.Namespace) -> int:
    from core.federation.client import leave, read_invitation

    invitation = read_invitation(args.invitation)
    leave(invitation, home_of(args), args.reason, proxy=args.proxy)
    print(f"Left {invitation.federation_name}: the coordinator was told and this hospital takes part in no further "
          "rounds. Its ledger, audit log and the models received stay in its home.")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from core.federation.simulate import SimulationConfig, parse_drop, run

    config = SimulationConfig(
        hospitals=args.hospitals, mode=args.mode, rounds=args.rounds, drops=[parse_drop(d) for d in args.drop],
        colluders=args.colluders, max_attempts=args.max_attempts,
        restart_dropped_after_s=args.restart_dropped, per_hospital=args.per_hospital, test_images=args.test_images,
        image_size=args.image_size or 64, model=args.model, workdir=args.workdir, seed=args.seed,
        threshold=args.threshold, sample_rate=args.sample_rate, batch_size=args.batch_size,
        local_epochs=args.local_epochs, noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm,
        lr=args.lr, momentum=args.momentum, delta=args.delta, accountant=args.accountant, secagg=args.secagg,
        max_epsilon=args.max_epsilon, server_optimizer=args.server_optimizer,
        server_lr_schedule=args.server_lr_schedule, device=args.device,
    )
    with progress_bar("Simulation") as progress:
        result = run(config, progress=progress)
    for r in result.rounds:
        metrics = r["metrics"]
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "kappa", "loss") if isinstance(metrics.get(k), float))
        print(f"round {r['round']:4d}: {r['seconds']:.3f} s, hospitals {','.join(r['included'])}" + (f", {shown}" if shown else ""))
    for h in result.hospitals:
        killed = f", killed in round {h.killed_in_round}" if h.killed_in_round else ""
        print(f"{h.name}: epsilon {h.epsilon:.4g}, {len(h.rounds_participated)} rounds, {h.bytes_sent} bytes sent, "
              f"{h.wall_time_s:.1f} s{killed}")
    if result.majority_baseline is not None and result.final_metrics.get("accuracy") is not None:
        print(f"final accuracy {result.final_metrics['accuracy']:.4f} (majority-class baseline {result.majority_baseline:.4f})")
    print(f"status: {result.status}; wall time {result.wall_time_s:.1f} s; model: {result.model_path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0 if result.status == "finished" else 1


def _audit_verify(args: argparse.Namespace) -> int:
    from core.audit import verify_audit_log
    from core.errors import AuditLogError
    from core.home import HospitalHome

    home = home_of(args)
    path = args.path
    if path is None:
        path = home.audit_log
    elif path.is_dir():
        if args.home is None and (path / "audit.jsonl").exists():
            home = HospitalHome.at(path)  # a home folder given as PATH: check it with its own key
        path = path / "audit.jsonl"
    public_key = None
    key_source = ""
    if args.public_key:
        try:
            public_key = bytes.fromhex(args.public_key.replace(" ", ""))
        except ValueError:
            raise AuditLogError("--public-key takes the raw Ed25519 public key as 64 hex digits.") from None
        key_source = "--public-key"
    elif Path(path).resolve() == home.audit_log.resolve() and home.identity_key.exists():
        from core.signing import load_private_key, public_key_bytes

        public_key = public_key_bytes(load_private_key(home.identity_key))
        key_source = str(home.identity_key)
    result = verify_audit_log(path, public_key)
    if args.json:
        print(json.dumps({"path": str(path), "ok": result.ok, "entries": result.entries,
                          "total_bytes": result.total_bytes, "broken_at_line": result.broken_at_line,
                          "reason": result.reason, "signatures_checked": result.signatures_checked,
                          "signer_fingerprint": result.signer_fingerprint, "key_source": key_source},
                         indent=2))
    else:
        print(result.to_text())
    return 0 if result.ok else 1
