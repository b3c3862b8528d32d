"""Empirical privacy auditing: measure a lower bound on epsilon by training with canaries.

Every epsilon Dopamine shows is an accountant's upper bound, only as true as the code it describes.
An audit trains once through the product's own code paths (local DP-SGD, or FSCDP rounds with real
secure aggregation in one process) on SYNTHETIC images with canaries, each included with
probability 1/2, and turns how well an attacker tells included from absent canaries into a
statistical lower bound (Steinke, Nasr and Jagielski 2023). An epsilon_lower above the accountant's
epsilon is a bug in the code or the accounting.

Modules: ``bound`` (the one-run bound; numpy and scipy only), ``canaries`` (the canaries and the one
injection hook, CanaryHarness), ``runners`` (the audited runs), ``audit`` (AuditConfig, run,
AuditResult), ``report`` (JSON, HTML and PNG). Import them directly; nothing is imported here, so
that reading a report does not load torch. The command is ``dopamine audit-dp`` (not ``dopamine
audit verify``, which checks the signed audit log); docs/privacy-audit.md explains what an audit
can and cannot show.
"""
