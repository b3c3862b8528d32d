"""Federation over HTTPS: a coordinator (FastAPI on uvicorn) and hospital clients.

Agreement:
  plan          FederationPlan (what all parties agree on), its hash and its privacy figures
  roster        the hospitals that may hold shares, fixed and signed by the hospitals; round parameters
  invitation    invitation files (URL, CA, one-time token, plan); read_invitation
  tls           the federation CA and the coordinator's certificate
  layout        the federation folder and `coordinator init`; invitation_sheet: a printable page per hospital
Wire:
  protocol      routes, round steps and the typed JSON views both sides exchange
  auth          Ed25519 request signing and verification (replay-proof)
  app, server   the HTTPS API on uvicorn
  transport     the hospital's pinned, signed, retrying HTTPS connection
  session       a hospital's typed calls to its coordinator
The coordinator:
  coordinator   the lock, enrollment, intake; carries out what the round machine decides
  round_state   its persisted state; round_machine: when to move on (pure)
  aggregation   secure or plain aggregation per mode; publisher: model, optimizer, card, evaluation
  presence, store, server_optimizer, weights, status
  service       the coordinator as a background process (start, pause, stop, find again) and its live status
  backup        `coordinator backup` (safe while serving) and `restore` (never back past the folder's state)
The hospital:
  client        `dopamine join`/`leave` as jobs: run(JoinConfig, progress=, cancel=, on_event=)
  hospital_round  the steps of one round attempt; membership: its folder in the hospital home
  local_work    what a hospital computes per mode (FSCDP step, F/FPDP local training)
  events        the client's events for the app and the CLI
  simulate      a whole federation on one computer, as separate processes
"""
