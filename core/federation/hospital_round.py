"""What a hospital does in each step of a round attempt (core.federation.protocol.Step).

One ``HospitalRound`` per attempt. Secure aggregation: ``advertise`` checks that the announced round
parameters are exactly what the plan and the signed roster give, then makes the round keys;
``share``, ``mask`` (compute, charge, mask, store, send), ``consistency`` and ``unmask`` follow. Without
it, ``update`` charges, trains and sends the model delta. Every noised upload is charged to the ledger
first, stored in the membership folder, then sent (``release``): after a crash the same bytes are resent.

FSCDP's one DP step depends on the global model only, not on the round keys, so ``start_compute`` runs it
on the participant's compute thread as the attempt opens, beside ``advertise`` and ``share`` (issue 14:
those exchanges no longer add to the round). The noised sum stays in this process: ``mask`` charges the
ledger, then masks and sends it; an attempt that ends before ``mask`` drops it unsent and uncharged.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

from core.errors import FederationError
from core.federation.events import LocalStepDone, Uploaded
from core.federation.protocol import RoundContext, Step
from core.memory import release_free_memory


class HospitalRound:
    def __init__(self, participant, ctx: RoundContext) -> None:
        self.p = participant
        self.ctx = ctx
        self._computed: Future | None = None  # FSCDP: (LocalResult, seconds) from the compute thread

    def start_compute(self) -> None:
        """FSCDP: start this attempt's DP step now (see the module's docstring); other modes train in mask."""
        if self.p.plan.mode == "fscdp" and self._computed is None:
            self._computed = self.p.compute_thread.submit(self._fscdp_step)

    def _fscdp_step(self):
        from core.federation.local_work import fscdp_step

        p = self.p
        started = time.perf_counter()
        p.load_global_into_model()
        result = fscdp_step(p.model, p.layout, p.images, p.labels, p.spec, p.plan, device=p.device)
        return result, time.perf_counter() - started

    def take(self, step: Step, view) -> None:
        {Step.UPDATE: self.update, Step.ADVERTISE: self.advertise, Step.SHARE: self.share, Step.MASK: self.mask,
         Step.CONSISTENCY: self.consistency, Step.UNMASK: self.unmask}[step](view)

    # -- helpers ----------------------------------------------------------------------------------

    def _send(self, step: Step, body: bytes, what: str, ledger_key: str = "") -> None:
        self.p.session.send_step(self.ctx.round, self.ctx.attempt, step, body, what, ledger_key)
        self.p.save()

    def _answer(self, step: Step) -> bytes:
        return self.p.session.answer(self.ctx.round, self.ctx.attempt, step)

    def release(self, step: Step, body: bytes, what: str, key: str, compute_s: float) -> None:
        """Store the noised upload durably, then send it: a restart resends these bytes, never new ones."""
        from core.config import atomic_write_bytes

        p, ctx = self.p, self.ctx
        atomic_write_bytes(p.folder.pending_upload(ctx.round, ctx.attempt), body, mode=0o600)
        p.state.rounds_uploaded[str(ctx.round)] = ctx.attempt
        self._send(step, body, what, ledger_key=key)
        p.emit(Uploaded(round=ctx.round, what=what, bytes=len(body), compute_s=compute_s))
        release_free_memory()  # the round's batches and gradients are gone: give their pages back (core.memory)

    def _train_delta(self):
        from core.federation.local_work import train_delta

        p, round = self.p, self.ctx.round
        return train_delta(p.model, p.layout, p.images, p.labels, p.spec, p.plan,
                           on_step=lambda step, loss: p.emit(LocalStepDone(round=round, step=step, loss=loss)),
                           cancel=p.cancel, device=p.device)

    # -- the steps --------------------------------------------------------------------------------

    def update(self, view) -> None:
        from core.federation.weights import tensors_to_bytes

        p, ctx = self.p, self.ctx
        p.load_global_into_model()
        key = p.charge(ctx.round, ctx.attempt)
        started = time.perf_counter()
        result = self._train_delta()
        body = tensors_to_bytes(p.layout.unflatten(result.vector))
        self.release(Step.UPDATE, body, f"model delta ({p.plan.mode.upper()})", key, time.perf_counter() - started)

    def advertise(self, view) -> None:
        from core.federation.roster import secagg_params
        from core.secagg import RoundParams, SecAggClient

        p, ctx = self.p, self.ctx
        expected = secagg_params(p.plan, p.roster, ctx.round, ctx.attempt, p.layout.length)
        announced = RoundParams.from_dict(view.secagg)
        if announced != expected:
            differ = sorted(k for k, v in expected.to_dict().items() if announced.to_dict().get(k) != v)
            raise FederationError(
                f"The coordinator announced secure-aggregation parameters ({', '.join(differ)}) that differ from "
                "what the plan and the signed roster give; not taking part.")
        ctx.client = SecAggClient(expected, p.invitation.hospital_id, p.key, p.roster.keys())
        self._send(Step.ADVERTISE, ctx.client.advertise().to_bytes(), "secure aggregation: public keys for this round")

    def share(self, view) -> None:
        from core.secagg import KeyRoster

        message = self.ctx.client.share_keys(KeyRoster.from_bytes(self._answer(Step.ADVERTISE)))
        self._send(Step.SHARE, message.to_bytes(), "secure aggregation: encrypted key shares for the other hospitals")

    def mask(self, view) -> None:
        from core.federation.local_work import clip_l2
        from core.secagg import ShareBundle

        p, ctx = self.p, self.ctx
        bundle = ShareBundle.from_bytes(self._answer(Step.SHARE))
        if p.plan.mode == "fscdp":
            self.start_compute()  # normally started as the attempt opened
            assert self._computed is not None
            result, compute_s = self._computed.result()
            self._computed = None
            p.emit(LocalStepDone(round=ctx.round, step=1, loss=result.loss))
            values = result.vector
            what = "masked, noised clipped-gradient sum (FSCDP)"
            key = p.charge(ctx.round, ctx.attempt)
        else:
            p.load_global_into_model()
            key = p.charge(ctx.round, ctx.attempt)
            started = time.perf_counter()
            result = self._train_delta()
            compute_s = time.perf_counter() - started
            weight = p.num_images / max(1, int(view.max_images or p.num_images))
            values = weight * clip_l2(result.vector, float(p.plan.update_bound))
            what = f"masked model delta ({p.plan.mode.upper()})"
        body = ctx.client.mask_input(bundle, values).to_bytes()
        del values, result  # the noised vector exists only in this attempt, masked under its keys only
        self.release(Step.MASK, body, what, key, compute_s)

    def consistency(self, view) -> None:
        from core.secagg import SurvivorSet

        message = self.ctx.client.sign_survivors(SurvivorSet.from_bytes(self._answer(Step.MASK)))
        self._send(Step.CONSISTENCY, message.to_bytes(),
                   "secure aggregation: signature on the survivor set this hospital was shown")

    def unmask(self, view) -> None:
        from core.secagg import UnmaskRequest

        message = self.ctx.client.unmask(UnmaskRequest.from_bytes(self._answer(Step.CONSISTENCY)))
        self._send(Step.UNMASK, message.to_bytes(), "secure aggregation: shares to remove the masks of the released sum")
