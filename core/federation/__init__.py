"""Federation over HTTPS: a coordinator (FastAPI on uvicorn) and hospital clients.

Modules:
  plan        FederationPlan (what all parties agree on) and its hash; plan_cost
  tls         the federation CA and the coordinator's certificate
  invitation  invitation files (URL, CA, one-time token, plan); read_invitation
  layout      the federation folder and `coordinator init`
  store       the coordinator's SQLite state
  auth        Ed25519 request signing and verification (replay-proof)
  coordinator rounds, phases, aggregation, publishing (no HTTP)
  server_optimizer  SGD with momentum or Adam on each round's aggregate
  weights     flat parameter vectors and safetensors payloads
  app         the HTTPS API; server: uvicorn
  transport   the hospital's pinned, signed, retrying HTTPS connection
  local_work  what a hospital computes per mode (FSCDP step, F/FPDP local training)
  client      `dopamine join` as a job: run(JoinConfig, progress=, cancel=, on_event=)
  events      the client's events for the GUI
  audit       the hospital's hash-chained log of everything it sent
  simulate    a whole federation on one computer, as separate processes
  status      `coordinator status`
"""
